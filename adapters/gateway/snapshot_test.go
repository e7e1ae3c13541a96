package gateway

import (
	"encoding/json"
	"fmt"
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// A snapshot larger than one part is cut into frames that each stay within
// the bound, numbered in order, every one but the last marked more, all at
// the snapshot's position; concatenating their lists gives back the
// snapshot exactly. An empty snapshot is one frame.
func TestSnapshotParts(t *testing.T) {
	id := func(prefix string, i int) string { return fmt.Sprintf("%s-%060d", prefix, i) } // near engine.MaxIDBytes
	big := &projections.Snapshot{Meta: &pb.TimelineMeta{Epoch: "epoch-1", LastSeq: 42}, Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}}
	for i := range 20_000 {
		big.Contacts.Friends = append(big.Contacts.Friends, id("f", i))
	}
	for i := range 300 {
		big.Contacts.RequestsIn = append(big.Contacts.RequestsIn, id("i", i))
		big.Contacts.Blocked = append(big.Contacts.Blocked, id("b", i))
	}
	for i := range 5_000 {
		big.Groups.Groups = append(big.Groups.Groups, id("g", i))
		big.Groups.Threads = append(big.Groups.Threads, id("g", i)+"/"+id("t", i))
	}
	for i := range 3_000 {
		big.Conversations = append(big.Conversations, &pb.Conversation{ChatType: pb.ChatType_CHAT_TYPE_GROUP, ConversationId: id("c", i),
			Pinned: i%7 == 0, PinnedAtMs: 1_700_000_000_000, Marks: 0xfffff, Unread: 1 << 40, LastSeq: 1 << 50, ReadSeq: 1 << 49, ClearedSeq: 1 << 48, LastMessageId: id("m", i)})
	}
	empty := &projections.Snapshot{Meta: &pb.TimelineMeta{Epoch: "e0"}, Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}}
	for _, tc := range []struct {
		name   string
		s      *projections.Snapshot
		budget int
		parts  int // at least
	}{
		{"big, default bound", big, 256 << 10, 10},
		{"big, smallest bound", big, 4 << 10, 700},
		{"empty", empty, 4 << 10, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frames, err := snapshotParts(tc.s, true, tc.budget)
			if err != nil {
				t.Fatal(err)
			}
			if len(frames) < tc.parts || (tc.s == empty && len(frames) != 1) {
				t.Fatalf("%d parts, want at least %d", len(frames), tc.parts)
			}
			got := &projections.Snapshot{Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}}
			for i, b := range frames {
				if len(b) > tc.budget {
					t.Fatalf("part %d is %d bytes, bound %d", i, len(b), tc.budget)
				}
				var f struct {
					Type          string            `json:"type"`
					Resync        bool              `json:"resync"`
					Epoch         string            `json:"epoch"`
					Seq           uint64            `json:"seq"`
					Part          *int              `json:"part"`
					More          bool              `json:"more"`
					Contacts      json.RawMessage   `json:"contacts"`
					Groups        json.RawMessage   `json:"groups"`
					Conversations []json.RawMessage `json:"conversations"`
				}
				if err := json.Unmarshal(b, &f); err != nil {
					t.Fatal(err)
				}
				if f.Type != "snapshot" || !f.Resync || f.Epoch != tc.s.Meta.Epoch || f.Seq != tc.s.Meta.LastSeq ||
					f.Part == nil || *f.Part != i || f.More != (i < len(frames)-1) || f.Conversations == nil {
					t.Fatalf("part %d of %d: %s", i, len(frames), b[:min(len(b), 200)])
				}
				c, g := &pb.Contacts{}, &pb.UserGroups{}
				if err := protojson.Unmarshal(f.Contacts, c); err != nil {
					t.Fatal(err)
				}
				if err := protojson.Unmarshal(f.Groups, g); err != nil {
					t.Fatal(err)
				}
				proto.Merge(got.Contacts, c) // repeated fields concatenate
				proto.Merge(got.Groups, g)
				for _, raw := range f.Conversations {
					cv := &pb.Conversation{}
					if err := protojson.Unmarshal(raw, cv); err != nil {
						t.Fatal(err)
					}
					got.Conversations = append(got.Conversations, cv)
				}
			}
			if !proto.Equal(got.Contacts, tc.s.Contacts) || !proto.Equal(got.Groups, tc.s.Groups) || len(got.Conversations) != len(tc.s.Conversations) {
				t.Fatalf("parts do not add up to the snapshot: %d/%d friends, %d/%d threads, %d/%d conversations",
					len(got.Contacts.Friends), len(tc.s.Contacts.Friends), len(got.Groups.Threads), len(tc.s.Groups.Threads), len(got.Conversations), len(tc.s.Conversations))
			}
			for i, cv := range got.Conversations {
				if !proto.Equal(cv, tc.s.Conversations[i]) {
					t.Fatalf("conversation %d: %v, want %v", i, cv, tc.s.Conversations[i])
				}
			}
		})
	}
}
