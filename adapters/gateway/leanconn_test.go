package gateway

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// recordConn is a net.Conn that records what is written to it.
type recordConn struct {
	net.Conn
	got bytes.Buffer
}

func (c *recordConn) Write(p []byte) (int, error) { return c.got.Write(p) }

// frame returns an unmasked server frame with an n-byte payload.
func testFrame(n int) []byte {
	h := []byte{0x81, 0}
	switch {
	case n > 0xffff:
		h[1] = 127
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	case n > 125:
		h[1] = 126
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h[1] = byte(n)
	}
	return append(h, bytes.Repeat([]byte{'x'}, n)...)
}

// Through the 16-byte bufio coder/websocket gets, a frame reaches the socket
// whole once it is flushed, and nothing of it is held back after.
func TestLeanConnWritesWholeFrames(t *testing.T) {
	for _, n := range []int{0, 1, 13, 14, 15, 100, 125, 126, 127, 4000, 65535, 65536, 70000} {
		rc := &recordConn{}
		lc := &leanConn{Conn: rc}
		bw := bufio.NewWriterSize(lc, leanBufio)
		var want []byte
		for range 3 { // consecutive frames, flushed once (as coder/websocket does a message's non-final frames)
			f := testFrame(n)
			want = append(want, f...)
			bw.WriteByte(f[0])
			bw.WriteByte(f[1])
			bw.Write(f[2 : len(f)-n])
			bw.Write(f[len(f)-n:])
		}
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(rc.got.Bytes(), want) || lc.held != 0 || lc.hn != 0 || lc.left != 0 {
			t.Fatalf("payload %d: wrote %d of %d bytes, %d held, header %d, left %d", n, rc.got.Len(), len(want), lc.held, lc.hn, lc.left)
		}
	}
}

// A frame's first bytes are held back only while the rest of it is to come.
func TestLeanConnHoldsOnlyAnIncompleteFrame(t *testing.T) {
	rc := &recordConn{}
	lc := &leanConn{Conn: rc}
	f := testFrame(300)
	lc.Write(f[:10])
	if rc.got.Len() != 0 || lc.held != 10 {
		t.Fatalf("after a partial frame: wrote %d, held %d", rc.got.Len(), lc.held)
	}
	lc.Write(f[10:])
	if !bytes.Equal(rc.got.Bytes(), f) || lc.held != 0 {
		t.Fatalf("after the rest: wrote %d of %d, held %d", rc.got.Len(), len(f), lc.held)
	}
}

// Reads return what net/http read behind the upgrade first, then the
// socket's bytes; the pooled buffer is let go once drained.
func TestLeanConnReadsWithoutKeepingABuffer(t *testing.T) {
	client, sc := loopbackPair(t)
	lc := &leanConn{Conn: sc, raw: rawConnOf(sc), pending: []byte("early ")}
	if lc.raw == nil {
		t.Skip("no RawConn on this platform")
	}
	if _, err := client.Write([]byte("hello world")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReaderSize(lc, leanBufio)
	got := make([]byte, len("early hello world"))
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "early hello world" {
		t.Fatalf("read %q", got)
	}
	if lc.rbuf != nil {
		t.Fatal("the read buffer is kept after it was drained")
	}
	client.Close()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want EOF", err)
	}
}

// writeFrame writes f through bw as coder/websocket does: the header, the
// payload, a flush.
func writeFrame(t *testing.T, bw *bufio.Writer, f []byte) {
	t.Helper()
	n := headerLen(f)
	bw.Write(f[:n])
	bw.Write(f[n:])
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
}

// While corked, whole frames collect and nothing reaches the socket; the
// first frame written after uncork leaves with them, in order, and the
// buffer is let go.
func TestLeanConnCorkCollectsFrames(t *testing.T) {
	rc := &recordConn{}
	lc := &leanConn{Conn: rc}
	bw := bufio.NewWriterSize(lc, leanBufio)
	var want []byte
	lc.cork()
	for _, n := range []int{0, 5, 14, 300, 70000} {
		f := testFrame(n)
		want = append(want, f...)
		writeFrame(t, bw, f)
	}
	if rc.got.Len() != 0 || lc.out == nil {
		t.Fatalf("corked: %d bytes reached the socket, buffer held %v", rc.got.Len(), lc.out != nil)
	}
	lc.uncork()
	last := testFrame(40)
	want = append(want, last...)
	writeFrame(t, bw, last)
	if !bytes.Equal(rc.got.Bytes(), want) {
		t.Fatalf("wrote %d bytes, want %d in order", rc.got.Len(), len(want))
	}
	if lc.out != nil || lc.held != 0 {
		t.Fatalf("after the write: buffer held %v, %d bytes held", lc.out != nil, lc.held)
	}
}

// A control frame is never collected: it leaves at once, after what was
// collected before it (a close frame may be followed by closing the
// socket).
func TestLeanConnCorkLetsControlFramesThrough(t *testing.T) {
	rc := &recordConn{}
	lc := &leanConn{Conn: rc}
	bw := bufio.NewWriterSize(lc, leanBufio)
	lc.cork()
	data := testFrame(100)
	writeFrame(t, bw, data)
	closeFrame := []byte{0x88, 2, 0x03, 0xe8} // close, status 1000
	writeFrame(t, bw, closeFrame)
	if want := append(bytes.Clone(data), closeFrame...); !bytes.Equal(rc.got.Bytes(), want) || lc.out != nil {
		t.Fatalf("after a close frame while corked: wrote %d of %d bytes, buffer held %v", rc.got.Len(), len(want), lc.out != nil)
	}
	more := testFrame(10)
	writeFrame(t, bw, more)
	if rc.got.Len() != len(data)+len(closeFrame) {
		t.Fatal("a data frame after the control frame was not collected while corked")
	}
}

// The serve goroutine's wait reads the bytes that end it into a pooled
// buffer, which the next Read returns; at the peer's close it reports the
// end.
func TestLeanConnWaitReadBuffersWhatArrives(t *testing.T) {
	client, sc := loopbackPair(t)
	lc := &leanConn{Conn: sc, raw: rawConnOf(sc)}
	if lc.raw == nil {
		t.Skip("no RawConn on this platform")
	}
	lc.br = bufio.NewReaderSize(lc, leanBufio)
	waited := make(chan error, 1)
	go func() { waited <- lc.waitRead() }()
	select {
	case err := <-waited:
		t.Fatalf("waitRead returned %v with nothing sent", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if !lc.buffered() {
		t.Fatal("nothing buffered after the wait")
	}
	if err := lc.waitRead(); err != nil { // bytes buffered: at once
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(lc.br, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	if lc.rbuf != nil || lc.buffered() {
		t.Fatal("the read buffer is kept after it was drained")
	}
	client.Close()
	if err := lc.waitRead(); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want EOF", err)
	}
}

// loopbackPair returns both ends of a TCP connection on 127.0.0.1, closed
// when the test ends.
func loopbackPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}
