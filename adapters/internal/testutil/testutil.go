// Package testutil holds the helpers the adapters' tests share: Kafka
// brokers for a test (a real cluster or an in-process kfake one), unique
// topic names, waiting for a consumer group to split the partitions, and a
// user whose stream lives on a given partition. Only tests import it.
package testutil

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
	"github.com/twmb/franz-go/pkg/kfake"
)

// BrokersEnv names real brokers for the Kafka tests (comma-separated); unset,
// they run against kfake in-process.
const BrokersEnv = "MDSYNC_KAFKA_BROKERS"

// Brokers returns the brokers of BrokersEnv, or starts a one-broker kfake
// cluster that lives until tb ends.
func Brokers(tb testing.TB) []string {
	tb.Helper()
	if env := os.Getenv(BrokersEnv); env != "" {
		return strings.Split(env, ",")
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		tb.Fatalf("kfake: %v", err)
	}
	tb.Cleanup(c.Close)
	return c.ListenAddrs()
}

var seq atomic.Int64

// Unique returns prefix followed by a suffix no earlier call, test or run
// (on a real broker) used: for topic and group names.
func Unique(prefix string) string {
	return fmt.Sprintf("%s.%d.%d", prefix, time.Now().UnixNano(), seq.Add(1))
}

// UniqueTopic names a topic after the test, unique as Unique.
func UniqueTopic(tb testing.TB) string {
	return Unique("mdsync-test." + strings.NewReplacer("/", ".", "=", "-", " ", "_").Replace(tb.Name()))
}

// WaitSplit waits until the members, each reporting the partitions it
// serves, together serve every one of parts partitions exactly once, each
// member at least one, and returns what each serves. It polls: the split is
// the group's state, which nothing in the test process signals. 30 s at
// most.
func WaitSplit(t testing.TB, parts int32, serving ...func() []int32) [][]int32 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var all []int32
		var each [][]int32
		for _, s := range serving {
			o := s()
			each = append(each, o)
			all = append(all, o...)
		}
		slices.Sort(all)
		ok := len(all) == int(parts)
		for _, o := range each {
			ok = ok && len(o) > 0
		}
		for i := range all {
			ok = ok && all[i] == int32(i)
		}
		if ok {
			return each
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions not served exactly once after 30s: %v", each)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// UserOn returns a user of app whose stream lives on partition p of parts.
func UserOn(app string, p, parts int32) string {
	for i := 0; ; i++ {
		u := fmt.Sprintf("user%d", i)
		if engine.PartitionFor([]byte(engine.UserStream(app, u)), parts) == p {
			return u
		}
	}
}
