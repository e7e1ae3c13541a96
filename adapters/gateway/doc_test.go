package gateway_test

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// protocolDoc is the device protocol's contract.
const protocolDoc = "../../docs/protocol.md"

// The generated sections of docs/protocol.md sit between these markers;
// MDSYNC_REWRITE_DOCS=1 go test ./adapters/gateway -run TestProtocolDocTables
// rewrites them from the descriptors and the kind table.
func generatedSections() map[string]string {
	return map[string]string{
		"event-names": eventNamesTable(),
		"payloads":    payloadsTable(),
		"reasons":     reasonsTable(),
	}
}

// TestProtocolDocTables: the doc's payload, event name and kick reason
// tables are what the .proto descriptors and engine's kind table say.
func TestProtocolDocTables(t *testing.T) {
	b, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	names := make([]string, 0)
	for name := range generatedSections() {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		want := generatedSections()[name]
		begin, end := "<!-- generated:"+name+" -->\n", "<!-- end:"+name+" -->"
		i, j := strings.Index(doc, begin), strings.Index(doc, end)
		if i < 0 || j < i {
			t.Errorf("docs/protocol.md has no %q ... %q section", strings.TrimSpace(begin), end)
			continue
		}
		if got := doc[i+len(begin) : j]; got != want {
			if os.Getenv("MDSYNC_REWRITE_DOCS") == "1" {
				doc = doc[:i+len(begin)] + want + doc[j:]
				continue
			}
			t.Errorf("docs/protocol.md section %s differs from the descriptors (MDSYNC_REWRITE_DOCS=1 rewrites it); want:\n%s", name, want)
		}
	}
	if os.Getenv("MDSYNC_REWRITE_DOCS") == "1" {
		if err := os.WriteFile(protocolDoc, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// eventNamesTable is one row per kind a timeline can carry: its event
// frame `name`, the same for multi-device and single-device events.
func eventNamesTable() string {
	var b strings.Builder
	b.WriteString("| kind | `name` | payload | where the name comes from |\n|---|---|---|---|\n")
	for _, k := range engine.Kinds() {
		var src string
		switch k.Category {
		case engine.CatThread, engine.CatConversation:
			src = "seed Web SDK, `onMultiDeviceEvent` operation"
			if k.Kind == pb.Kind_KIND_THREAD_KICK {
				src = "mdsync (the seed Web SDK names none)"
			}
		case engine.CatContact:
			src = "Web SDK contact event"
			if k.Kind == pb.Kind_KIND_CONTACT_BAN || k.Kind == pb.Kind_KIND_CONTACT_ALLOW {
				src = "mdsync (the Web SDK has no block-list event)"
			}
		case engine.CatGroup:
			src = "Web SDK `onGroupEvent` operation"
			switch k.Kind {
			case pb.Kind_KIND_GROUP_BAN:
				src = "mdsync, pair of `unblockMember`"
			case pb.Kind_KIND_GROUP_BLOCK, pb.Kind_KIND_GROUP_UNBLOCK:
				src = "mdsync (the Web SDK names none)"
			}
		case engine.CatDerived:
			continue
		default:
			src = "the kind's JSON name"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | `%s` | %s |\n", k.Kind, k.Event, k.Payload(), src)
	}
	return b.String()
}

// payloadsTable lists every payload of mdsync.v1.Event with its fields and
// the kinds that carry it, from the descriptors.
func payloadsTable() string {
	ev := (&pb.Event{}).ProtoReflect().Descriptor()
	oneof := ev.Oneofs().ByName("payload")
	kindsOf := map[string][]string{}
	for _, k := range engine.Kinds() {
		kindsOf[k.Payload()] = append(kindsOf[k.Payload()], "`"+k.Kind.String()+"`")
	}
	var b strings.Builder
	nested := map[protoreflect.FullName]protoreflect.MessageDescriptor{}
	for i := 0; i < oneof.Fields().Len(); i++ {
		fd := oneof.Fields().Get(i)
		md := fd.Message()
		fmt.Fprintf(&b, "**`%s`** (`%s`), carried by %s", fd.Name(), md.Name(), strings.Join(kindsOf[string(fd.Name())], ", "))
		if fd.Name() == "deliver" {
			b.WriteString(" — derived by mdsync, never submitted")
		}
		b.WriteString("\n\n")
		writeFields(&b, md, nested)
		b.WriteString("\n")
	}
	keys := make([]string, 0, len(nested))
	for k := range nested {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	for _, k := range keys {
		md := nested[protoreflect.FullName(k)]
		fmt.Fprintf(&b, "**`%s`** (inside a payload)\n\n", md.Name())
		writeFields(&b, md, nil)
		b.WriteString("\n")
	}
	return b.String()
}

func writeFields(b *strings.Builder, md protoreflect.MessageDescriptor, nested map[protoreflect.FullName]protoreflect.MessageDescriptor) {
	if md.Fields().Len() == 0 {
		b.WriteString("no fields: `{}`\n")
		return
	}
	b.WriteString("| field | JSON type |\n|---|---|\n")
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		fmt.Fprintf(b, "| `%s` | %s |\n", fd.TextName(), jsonType(fd, nested))
	}
}

func jsonType(fd protoreflect.FieldDescriptor, nested map[protoreflect.FullName]protoreflect.MessageDescriptor) string {
	var t string
	switch fd.Kind() {
	case protoreflect.StringKind:
		t = "string"
	case protoreflect.BoolKind:
		t = "bool"
	case protoreflect.BytesKind:
		t = "string (base64 bytes)"
	case protoreflect.EnumKind:
		t = fmt.Sprintf("string, a `%s` name", fd.Enum().Name())
	case protoreflect.MessageKind:
		t = fmt.Sprintf("object `%s`", fd.Message().Name())
		if nested != nil && fd.Message().FullName() != (&pb.Event{}).ProtoReflect().Descriptor().FullName() {
			nested[fd.Message().FullName()] = fd.Message()
		}
	case protoreflect.Int64Kind, protoreflect.Uint64Kind, protoreflect.Sint64Kind, protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind:
		t = "number (64-bit integer)"
	default:
		t = "number"
	}
	if fd.IsList() {
		t = "array of " + t
	}
	return t
}

// reasonCodes is the code a session ended for each reason is sent with
// (engine/sessions.go).
var reasonCodes = map[pb.Reason]engine.Code{
	pb.Reason_REASON_LOGIN_OTHER_DEVICE: engine.CodeLoginOtherDevice,
	pb.Reason_REASON_KICKED:             engine.CodeKickedByOtherDevice,
	pb.Reason_REASON_PASSWORD_CHANGED:   engine.CodePasswordChanged,
	pb.Reason_REASON_USER_REMOVED:       engine.CodeUserRemoved,
	pb.Reason_REASON_POLICY_LIMIT:       engine.CodeKickedByOtherDevice,
	pb.Reason_REASON_LOGOUT:             engine.CodeOK,
}

var reasonWhy = map[pb.Reason]string{
	pb.Reason_REASON_LOGIN_OTHER_DEVICE: "a newer login on the same platform took the slot (the fifth login, or single-platform mode); `by_login_id`, `by_device_name`, `by_extension` name it (onUserDidLoginFromOtherDevice)",
	pb.Reason_REASON_KICKED:             "kickDevice / kickAllDevices, by another device of the user, the user's credential or the admin; `by_login_id` names the kicking device when there is one (onUserKickedByOtherDevice)",
	pb.Reason_REASON_PASSWORD_CHANGED:   "the user's password was changed: every device is logged out",
	pb.Reason_REASON_USER_REMOVED:       "the user was removed: every device is logged out",
	pb.Reason_REASON_POLICY_LIMIT:       "a policy change lowered the platform's limit (or switched to single-platform mode): the earliest logins over the new limit are logged out",
	pb.Reason_REASON_LOGOUT:             "the device logged out itself: no `kicked` frame; its `result` is followed by close status 1000",
}

func reasonsTable() string {
	var b strings.Builder
	b.WriteString("| `reason` | `code` | when |\n|---|---|---|\n")
	vals := pb.Reason(0).Descriptor().Values()
	for i := 0; i < vals.Len(); i++ {
		r := pb.Reason(vals.Get(i).Number())
		if r == pb.Reason_REASON_UNSPECIFIED {
			continue
		}
		code, ok := reasonCodes[r]
		if !ok {
			code = -1 // a new reason: the table fails until it is described
		}
		fmt.Fprintf(&b, "| `%s` | %d | %s |\n", r, code, reasonWhy[r])
	}
	return b.String()
}
