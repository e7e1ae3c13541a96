package engine

import "testing"

// TestEventNames: every kind has one event name, and no two kinds share one
// (a client switches on it).
func TestEventNames(t *testing.T) {
	seen := map[string]string{}
	for _, k := range Kinds() {
		if k.Event == "" {
			t.Errorf("%s has no event name", k.Name)
		}
		if other, dup := seen[k.Event]; dup {
			t.Errorf("%s and %s share the event name %q", other, k.Name, k.Event)
		}
		seen[k.Event] = k.Name
		if EventName(k.Kind) != k.Event {
			t.Errorf("EventName(%s) = %q", k.Name, EventName(k.Kind))
		}
	}
}
