package gateway

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
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
