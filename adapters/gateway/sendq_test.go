package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/engine"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// sendqPair returns a server connection whose socket is a leanConn (as
// ServeHTTP makes one, without a reader: the tests drive its writer) and
// the device's end of it.
func sendqPair(t *testing.T, mod func(*Options), dial *websocket.DialOptions) (*conn, *websocket.Conn) {
	t.Helper()
	var o Options
	if mod != nil {
		mod(&o)
	}
	o.ensureDefaults()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{o: o, m: m}
	conns := make(chan *conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lw := &leanWriter{ResponseWriter: w}
		ws, err := websocket.Accept(lw, r, nil)
		if err != nil {
			return
		}
		conns <- newConn(g, ws, lw.conn, r.RemoteAddr)
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dev, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), dial)
	if err != nil {
		t.Fatal(err)
	}
	dev.SetReadLimit(-1)
	c := <-conns
	if c.sock == nil {
		t.Fatal("the server's socket is not a leanConn")
	}
	t.Cleanup(func() {
		dev.CloseNow()
		c.terminate(0, websocket.StatusNormalClosure, nil)
		c.wg.Wait()
	})
	return c, dev
}

// queueAll queues fs as one wake-up of the writer finds them: the writer
// starts with the first and takes the queue only after the last.
func queueAll(c *conn, fs ...outFrame) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	for _, f := range fs {
		c.enqueueLocked(f)
	}
}

// textFrames returns n frames of typ whose payload is "<prefix><i>" padded
// with dots to size bytes.
func textFrames(n, size int, prefix, typ string) []outFrame {
	fs := make([]outFrame, n)
	for i := range fs {
		b := []byte(fmt.Sprintf("%s%d", prefix, i))
		for len(b) < size {
			b = append(b, '.')
		}
		fs[i] = outFrame{b: b, typ: typ}
	}
	return fs
}

// readFrames reads n frames and fails unless they are want's, in order.
func readFrames(t *testing.T, dev *websocket.Conn, want []outFrame) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, f := range want {
		_, b, err := dev.Read(ctx)
		if err != nil {
			t.Fatalf("frame %d of %d: %v", i, len(want), err)
		}
		if string(b) != string(f.b) {
			t.Fatalf("frame %d: got %.30q, want %.30q", i, b, f.b)
		}
	}
}

// writes returns the writer's socket writes so far and the frames they
// carried (the mdsync_gateway_write_frames histogram).
func writes(t *testing.T, c *conn) (n uint64, frames float64) {
	t.Helper()
	var m dto.Metric
	if err := c.g.m.writeGroup.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// waitWrites waits until the writer made want writes.
func waitWrites(t *testing.T, c *conn, want uint64) float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, frames := writes(t, c)
		if n == want {
			return frames
		}
		if n > want || time.Now().After(deadline) {
			t.Fatalf("the writer made %d writes (%v frames), want %d", n, frames, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// Frames queued together leave together, in order, in one write, and the
// connection holds no write buffer after it.
func TestWriterCoalescesQueuedFrames(t *testing.T) {
	c, dev := sendqPair(t, nil, nil)
	fs := textFrames(300, 60, "f", "event")
	queueAll(c, fs...)
	readFrames(t, dev, fs)
	if frames := waitWrites(t, c, 1); frames != 300 {
		t.Fatalf("one write carried %v frames, want 300", frames)
	}
	// Each wake-up is a write of its own, and the order holds across them.
	more := textFrames(5, 10, "g", "result")
	for _, f := range more {
		queueAll(c, f)
		readFrames(t, dev, []outFrame{f})
	}
	waitWrites(t, c, 6)
	c.qmu.Lock()
	qn := c.qn
	c.qmu.Unlock()
	if qn != 0 || c.sock.out != nil || c.sock.corked.Load() {
		t.Fatalf("after the writes: %d frames counted queued, buffer held %v, corked %v", qn, c.sock.out != nil, c.sock.corked.Load())
	}
}

// A write carries frames up to coalesceBytes: the frame that reaches it
// ends the write, and the rest go in the next, in order.
func TestWriterBoundsAWriteByBytes(t *testing.T) {
	for _, tc := range []struct {
		sizes []int
		want  int
	}{
		{[]int{10}, 1},
		{[]int{10, 20, 30}, 3},
		{[]int{coalesceBytes}, 1},
		{[]int{coalesceBytes - 1, 1, 5}, 2},
		{[]int{coalesceBytes - 1, 0, 5}, 3},
		{[]int{coalesceBytes * 3, 5}, 1},
	} {
		batch := make([]outFrame, len(tc.sizes))
		for i, n := range tc.sizes {
			batch[i] = outFrame{b: make([]byte, n)}
		}
		if got := groupLen(batch); got != tc.want {
			t.Errorf("groupLen(%v) = %d, want %d", tc.sizes, got, tc.want)
		}
	}
	if got := groupLen([]outFrame{{b: []byte("a")}, {b: []byte("b")}, {close: true}, {b: []byte("c")}}); got != 2 {
		t.Errorf("groupLen stops at a close order: got %d, want 2", got)
	}

	c, dev := sendqPair(t, nil, nil)
	fs := textFrames(10, 10<<10, "big", "events")
	queueAll(c, fs...)
	readFrames(t, dev, fs)
	// 10 KiB frames: 4 reach 32 KiB, so 4 + 4 + 2.
	if frames := waitWrites(t, c, 3); frames != 10 {
		t.Fatalf("3 writes carried %v frames, want 10", frames)
	}
}

// A close order queued behind frames closes the connection after them:
// the device reads every frame before it in order, then the final frame
// and the close status; nothing queued behind the order is written.
func TestWriterClosesAfterQueuedFrames(t *testing.T) {
	c, dev := sendqPair(t, nil, nil)
	fs := textFrames(50, 100, "before", "event")
	final := []byte(`{"type":"kicked","code":1}`)
	queueAll(c, fs...)
	queueAll(c, append([]outFrame{{b: final, close: true, code: engine.Code(1), status: statusEnded}}, textFrames(10, 100, "after", "event")...)...)
	readFrames(t, dev, append(fs, outFrame{b: final}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := dev.Read(ctx)
	if websocket.CloseStatus(err) != statusEnded {
		t.Fatalf("after the final frame: %q, %v; want the close status %d", b, err, statusEnded)
	}
	c.wg.Wait()
	if c.sock.out != nil {
		t.Fatal("the write buffer is held after the close")
	}
}

// A device that stops reading while frames are queued for it is closed as
// a slow consumer (1016) once a write takes nothing for WriteTimeout; what
// it had read by then is the queue's prefix, in order, and the connection
// lets its write buffer go.
func TestWriterSlowReaderIsClosed(t *testing.T) {
	c, dev := sendqPair(t, func(o *Options) { o.WriteTimeout = 300 * time.Millisecond }, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if tc, ok := nc.(*net.TCPConn); ok {
				tc.SetReadBuffer(4096)
			}
			return nc, err
		}}},
	})
	if tc, ok := c.sock.Conn.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4096)
	}
	fs := textFrames(400, 16<<10, "s", "event") // far more than the sockets' buffers
	queueAll(c, fs...)
	select {
	case <-c.ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a device that does not read is still connected after 10s")
	}
	c.wg.Wait()
	if code := engine.Code(c.closeCode.Load()); code != engine.CodeSlowConsumer {
		t.Fatalf("closed with %d, want %d", code, engine.CodeSlowConsumer)
	}
	if c.sock.out != nil || c.sock.corked.Load() {
		t.Fatalf("after the close: buffer held %v, corked %v", c.sock.out != nil, c.sock.corked.Load())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := 0
	for ; ; n++ {
		_, b, err := dev.Read(ctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatal("the device's read did not end")
			}
			break
		}
		if n >= len(fs) || string(b) != string(fs[n].b) {
			t.Fatalf("frame %d read: %.20q", n, b)
		}
	}
	if n == len(fs) {
		t.Fatal("every frame arrived: the device was not slow")
	}
	t.Logf("the device read %d of %d frames before the close", n, len(fs))
}

// The write bound of a group is the socket's deadline, and it ends with
// the group: a connection idle for longer than WriteTimeout still writes
// its next frames and the teardown's final frame.
func TestWriterDeadlineEndsWithTheGroup(t *testing.T) {
	c, dev := sendqPair(t, func(o *Options) { o.WriteTimeout = 50 * time.Millisecond }, nil)
	fs := textFrames(3, 100, "first", "event")
	queueAll(c, fs...)
	readFrames(t, dev, fs)
	time.Sleep(200 * time.Millisecond) // four WriteTimeouts, idle
	more := textFrames(2, 100, "later", "event")
	queueAll(c, more...)
	readFrames(t, dev, more)
	time.Sleep(200 * time.Millisecond)
	final := []byte(`{"type":"kicked","code":1}`)
	c.terminate(engine.Code(1), statusEnded, final)
	readFrames(t, dev, []outFrame{{b: final}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, b, err := dev.Read(ctx); websocket.CloseStatus(err) != statusEnded {
		t.Fatalf("after the final frame: %q, %v; want the close status %d", b, err, statusEnded)
	}
	c.wg.Wait()
	if code := engine.Code(c.closeCode.Load()); code != 1 {
		t.Fatalf("closed with %d, want 1", code)
	}
}
