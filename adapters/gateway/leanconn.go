package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
)

// An idle device connection should cost its conn struct, the library's
// per-connection state and one parked goroutine, not buffers. Without help
// coder/websocket keeps the 4 KiB bufio.Reader and bufio.Writer net/http
// hands over at the hijack for the connection's whole life (40% of an idle
// gateway's heap). It has no option to size or release them, but it reads
// and writes through whatever Hijack returns: leanWriter hands it a 16-byte
// bufio pair over a leanConn, which reads into a pooled buffer only once the
// socket is readable and returns it when drained, and which holds a frame's
// first bytes back so that a frame still leaves in one write (writev).
//
// A busy connection's frames should not cost a write each either: while the
// connection's writer has several frames to write it corks the leanConn,
// whose writes then collect whole frames in a pooled buffer, and uncorks it
// before the last one, which leaves with them in one writev (sendq.go). The
// buffer goes back to the pool with that write: an idle connection holds
// none.

// leanBufio is the size of the bufio pair given to coder/websocket: room for
// any frame header (at most 14 bytes), so a header is never cut by a flush.
const leanBufio = 16

// readBufSize is the pooled read buffer, net/http's own bufio size.
const readBufSize = 4096

var readBufs = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// outBufSize is a corked buffer's first capacity; one that grew past
// maxOutBuf is left to the collector rather than pooled.
const (
	outBufSize = 8 << 10
	maxOutBuf  = 256 << 10
)

// outBuf is what a write that sends more than its own bytes needs: the
// bytes collected while corked and the writev's vector. Pooled, so that an
// idle connection holds none of it.
type outBuf struct {
	b    []byte
	iov  [3][]byte
	bufs net.Buffers // over iov
}

var outBufs = sync.Pool{New: func() any { return &outBuf{b: make([]byte, 0, outBufSize)} }}

// leanWriter is a ResponseWriter whose Hijack returns a leanConn (conn).
type leanWriter struct {
	http.ResponseWriter
	conn *leanConn
}

func (w *leanWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *leanWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("gateway: the ResponseWriter cannot be hijacked")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	if err := brw.Writer.Flush(); err != nil { // normally empty: net/http flushed the 101
		nc.Close()
		return nil, nil, err
	}
	c := &leanConn{Conn: nc, raw: rawConnOf(nc)}
	if n := brw.Reader.Buffered(); n > 0 {
		// Frames the device sent right behind its upgrade request.
		b, _ := brw.Reader.Peek(n)
		c.pending = bytes.Clone(b)
	}
	c.br = bufio.NewReaderSize(c, leanBufio)
	w.conn = c
	return c, bufio.NewReadWriter(c.br, bufio.NewWriterSize(c, leanBufio)), nil
}

// leanConn is a hijacked connection that holds no buffer while idle.
// Writes are from one goroutine at a time (coder/websocket's frame lock),
// as bufio requires anyway; so are the library's reads, but waitRead
// reads on the connection's serve goroutine too, so the read state has a
// lock of its own (rmu).
type leanConn struct {
	net.Conn
	raw syscall.RawConn // nil when the connection has none (TLS): plain reads
	br  *bufio.Reader   // the library's reader over this conn
	// mu orders buffered against the close handshake, which reads through
	// br on the teardown's goroutine (conn.closeSocket). Taken before rmu.
	mu sync.Mutex

	// rmu guards the read state below, and is held while a read waits for
	// the socket, so that bytes are taken from the socket and buffered in
	// the order they came whichever goroutine reads them.
	rmu     sync.Mutex
	pending []byte  // read behind the upgrade request by net/http
	rbuf    *[]byte // pooled, only while it holds unread bytes (rbuf[r:w])
	r, w    int

	// corked: writes collect in out instead of leaving (cork). Set by the
	// connection's writer outside the library's frame lock, hence atomic.
	corked atomic.Bool
	out    *outBuf // pooled, only while it holds bytes not yet written

	// The frame being written (unmasked or masked, any length): hn header
	// bytes seen (hdr), then left payload bytes to come. held bytes of it
	// are kept back until the frame is complete.
	hdr  [14]byte
	hn   int
	left uint64
	hold [leanBufio]byte
	held int
	// ctl: the last frame whose header was seen is a control frame. One is
	// never collected by cork: a close frame may be followed at once by
	// the library closing the socket, and a pong is not kept waiting.
	ctl bool
}

func (c *leanConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		if c.pending = c.pending[n:]; len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	if c.rbuf == nil {
		if c.raw == nil || len(p) >= readBufSize {
			return c.Conn.Read(p) // straight into the caller's buffer
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, (*c.rbuf)[c.r:c.w])
	if c.r += n; c.r == c.w {
		readBufs.Put(c.rbuf)
		c.rbuf = nil
	}
	return n, nil
}

// buffered reports whether bytes already read from the socket wait to be
// read.
func (c *leanConn) buffered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.br.Buffered() > 0 {
		return true
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.unread()
}

// unread reports whether pending or rbuf hold bytes. c.rmu held.
func (c *leanConn) unread() bool { return len(c.pending) > 0 || c.rbuf != nil }

// waitRead parks until the socket has bytes, holding no buffer, and reads
// them into a pooled one for the next Read; at once when bytes are
// buffered already. An error is the socket's (EOF when the peer closed).
// It is the wait of the connection's serve goroutine: reading there
// rather than peeking saves a syscall per burst of frames.
func (c *leanConn) waitRead() error {
	if c.buffered() {
		return nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.unread() { // read by the close handshake meanwhile
		return nil
	}
	return c.fill()
}

// fill waits until the socket is readable, holding no buffer, then reads
// what it has into a pooled one. c.rmu held.
func (c *leanConn) fill() error {
	var (
		b    *[]byte
		n    int
		rerr error
	)
	err := c.raw.Read(func(fd uintptr) bool {
		b = readBufs.Get().(*[]byte)
		n, rerr = sysRead(fd, *b)
		if errors.Is(rerr, syscall.EAGAIN) {
			readBufs.Put(b)
			b = nil
			return false // wait for readability, then call again
		}
		return true
	})
	if err == nil && rerr != nil {
		err = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: rerr}
	}
	if err == nil && n <= 0 {
		err = io.EOF
	}
	if err != nil {
		if b != nil {
			readBufs.Put(b)
		}
		return err
	}
	c.rbuf, c.r, c.w = b, 0, n
	return nil
}

// cork makes the writes that follow collect in a buffer (whole frames,
// from whichever goroutine writes them) until uncork; the first write
// after uncork sends them with its own bytes in one writev.
func (c *leanConn) cork() { c.corked.Store(true) }

// uncork ends cork; see there.
func (c *leanConn) uncork() { c.corked.Store(false) }

func (c *leanConn) Write(p []byte) (int, error) {
	c.advance(p)
	if c.corked.Load() && !c.ctl {
		c.collect(p)
		return len(p), nil
	}
	if (c.hn > 0 || c.left > 0) && c.held+len(p) <= len(c.hold) {
		// Mid-frame: the rest follows within the same frame write.
		c.held += copy(c.hold[c.held:], p)
		return len(p), nil
	}
	if c.held == 0 && c.out == nil {
		return c.Conn.Write(p)
	}
	before := c.held
	if c.out != nil {
		before += len(c.out.b)
	}
	n, err := c.writev(p)
	return max(int(n)-before, 0), err
}

// collect appends what is held and p to out (taking a buffer from the
// pool when out has none).
func (c *leanConn) collect(p []byte) {
	if c.out == nil {
		c.out = outBufs.Get().(*outBuf)
	}
	c.out.b = append(append(c.out.b, c.hold[:c.held]...), p...)
	c.held = 0
}

// writev writes out, the held bytes and p in one writev (one syscall, one
// segment) and lets out and the held bytes go.
func (c *leanConn) writev(p []byte) (int64, error) {
	o := c.out
	if o == nil {
		o = outBufs.Get().(*outBuf)
	}
	o.bufs = o.iov[:0]
	if len(o.b) > 0 {
		o.bufs = append(o.bufs, o.b)
	}
	if c.held > 0 {
		o.bufs = append(o.bufs, c.hold[:c.held])
	}
	o.bufs = append(o.bufs, p)
	n, err := o.bufs.WriteTo(c.Conn)
	o.iov, o.bufs = [3][]byte{}, nil // keep no reference to p or to c
	c.held, c.out = 0, nil
	if cap(o.b) <= maxOutBuf {
		o.b = o.b[:0]
		outBufs.Put(o)
	}
	return n, err
}

// advance follows the frame boundaries through p.
func (c *leanConn) advance(p []byte) {
	for len(p) > 0 {
		if c.left > 0 {
			k := min(uint64(len(p)), c.left)
			c.left -= k
			p = p[k:]
			continue
		}
		c.hdr[c.hn] = p[0]
		c.hn++
		p = p[1:]
		if need := headerLen(c.hdr[:c.hn]); need == c.hn {
			c.left = payloadLen(c.hdr[:c.hn])
			c.ctl = c.hdr[0]&0x08 != 0 // opcodes 0x8-0xF (RFC 6455 5.5)
			c.hn = 0
		}
	}
}

// headerLen is the length of the frame header that starts with h (RFC 6455
// 5.2), or 0 while h is too short to tell.
func headerLen(h []byte) int {
	if len(h) < 2 {
		return 0
	}
	n := 2
	switch h[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if h[1]&0x80 != 0 {
		n += 4 // masking key
	}
	return n
}

// payloadLen is the payload length of the complete header h.
func payloadLen(h []byte) uint64 {
	switch l := h[1] & 0x7f; l {
	case 126:
		return uint64(h[2])<<8 | uint64(h[3])
	case 127:
		var n uint64
		for _, b := range h[2:10] {
			n = n<<8 | uint64(b)
		}
		return n
	default:
		return uint64(l)
	}
}
