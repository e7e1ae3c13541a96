package engine

import "testing"

// IsUserStream is stream == UserStream(app, user), for streams that are,
// almost are, and are not a user's (separators inside the names, other
// stream kinds, shorter and longer strings).
func TestIsUserStream(t *testing.T) {
	names := []string{"", "a", "app", "a\x00b", "\x00", "alice", "alic", "b\x00c", "u"}
	streams := []string{"", "u", "u\x00", "u\x00\x00", GroupStream("app", "alice"), RoomStream("a", "b")}
	for _, app := range names {
		for _, user := range names {
			streams = append(streams, UserStream(app, user))
		}
	}
	for _, s := range streams {
		for _, app := range names {
			for _, user := range names {
				if got, want := IsUserStream(s, app, user), s == UserStream(app, user); got != want {
					t.Errorf("IsUserStream(%q, %q, %q) = %v, want %v", s, app, user, got, want)
				}
			}
		}
	}
}
