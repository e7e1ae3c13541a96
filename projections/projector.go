package projections

import (
	"context"
	"fmt"

	"github.com/mdsync/mdsync/engine"
	"google.golang.org/protobuf/proto"
)

// readBatch is how many log entries one projection batch applies at most.
const readBatch = 512

// Rebuild builds a fresh store from offset 0 of every partition up to the
// log's current end. opts.Dir must be empty or absent.
func Rebuild(ctx context.Context, log engine.Log, opts Options) (*Store, error) {
	opts.Partitions = log.Partitions()
	s, err := Open(opts)
	if err != nil {
		return nil, err
	}
	for p := int32(0); p < s.opts.Partitions; p++ {
		if s.Checkpoint(p).NextOffset != 0 {
			s.Close()
			return nil, fmt.Errorf("projections: rebuild into a non-empty store (%s)", opts.Dir)
		}
	}
	if err := s.CatchUp(ctx, log); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func unmarshal(b []byte, m proto.Message) error {
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("projections: decode: %w", err)
	}
	return nil
}
