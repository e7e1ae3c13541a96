package gateway

// Catch-up in batches (docs/protocol.md, "events"). A device that said
// "batch": true at login or resume gets the entries the follower reads from
// the store as events frames: {"type":"events","events":[F1,F2,...]},
// where each Fi is, byte for byte, the event frame it would otherwise get.
// The frame is built by appending the stored entries' bytes, as the single
// frames are; nothing is decoded. One WebSocket frame per entry costs more
// than the whole read of the store (issue 13): batches are what make a long
// catch-up cheap. Live events stay single event frames.
//
// Order and gap-freedom are the store path's: a batch holds consecutive
// visible entries of one read, in sequence order, and the follower records
// its last seq as sent before queueing it, as it does for a single frame.

const (
	// maxBatchBytes bounds the events of one events frame: with its 29
	// bytes of envelope, a batch is far under the 16 MiB a client must
	// accept, and small enough that a device is not kept waiting for the
	// first event of a long catch-up.
	maxBatchBytes = 64 << 10
	// maxBatchEvents bounds the events of one events frame.
	maxBatchEvents = timelinePage
	// maxQueuedBatches: an events frame is queued only while fewer frames
	// than this are queued or being written (the send queue bounds frames,
	// and a batch weighs up to maxBatchBytes), so the follower reads the
	// store about as far ahead of the socket as it does with single frames.
	maxQueuedBatches = 8
)

const batchHead = `{"type":"events","events":[`

// pageFrame is one frame of a catch-up page: an event frame, or (typ
// "events") a batch of n; seq is the last entry's.
type pageFrame struct {
	seq uint64
	n   int
	b   []byte
	typ string
}

// page builds the frames of one store read: one event frame per entry, or
// (batch) events frames of up to maxBatchEvents entries and maxBatchBytes.
type page struct {
	batch  bool
	frames []pageFrame

	open   []byte // the batch being filled: batchHead and its events, comma-separated
	openN  int    // events in open
	openAt int    // where open's last event starts
	last   uint64 // seq of open's last event
}

func (p *page) reset() {
	clear(p.frames) // drop the byte slices: the writer owns them now
	p.frames = p.frames[:0]
	p.open, p.openN = nil, 0
}

// add appends the event frame of a stored entry.
func (p *page) add(epoch string, seq uint64, name string, entry []byte) error {
	if !p.batch {
		b, err := eventFrameJSON(epoch, seq, name, entry)
		if err != nil {
			return err
		}
		p.frames = append(p.frames, pageFrame{seq, 1, b, "event"})
		return nil
	}
	// At most the event frame's bytes and a comma (its strings escaped at
	// worst; json.Marshal's fallback may escape the entry too: see below).
	size := 1 + len(entry) + 6*(len(epoch)+len(name)) + eventFrameSlack
	if size > maxBatchBytes {
		// Larger than a batch: it travels as its event frame.
		p.flush()
		b, err := eventFrameJSON(epoch, seq, name, entry)
		if err != nil {
			return err
		}
		p.frames = append(p.frames, pageFrame{seq, 1, b, "event"})
		return nil
	}
	if p.openN > 0 && (p.openN == maxBatchEvents || len(p.open)-len(batchHead)+size > maxBatchBytes) {
		p.flush() // it cannot fit: it starts the next batch
	}
	if p.open == nil {
		p.open = newBatch()
	}
	at := len(p.open)
	if p.openN > 0 {
		p.open = append(p.open, ',')
	}
	var err error
	if p.open, err = appendEventFrame(p.open, epoch, seq, name, entry); err != nil {
		return err
	}
	if p.openN > 0 && len(p.open)-len(batchHead) > maxBatchBytes {
		// Only when json.Marshal escaped the entry beyond the bound: close
		// the batch without it and start the next one with it.
		ev := append([]byte(nil), p.open[at+1:]...)
		p.open = p.open[:at]
		p.flush()
		p.open = append(newBatch(), ev...)
		at = len(batchHead)
	}
	p.openAt = at
	if p.openN > 0 {
		p.openAt++ // past the comma
	}
	p.openN++
	p.last = seq
	return nil
}

// eventFrameSlack is an event frame's bytes besides its strings and entry.
const eventFrameSlack = len(`{"type":"event","epoch":"","seq":18446744073709551615,"name":"","entry":}`)

// newBatch starts an events frame with room for maxBatchBytes of events
// and its end: filling it never copies it.
func newBatch() []byte {
	return append(make([]byte, 0, len(batchHead)+maxBatchBytes+len("]}")), batchHead...)
}

// flush closes the open batch: an events frame, or the event frame itself
// when it holds one event (the same bytes; a lone entry, or one larger
// than maxBatchBytes, travels as it would without batches).
func (p *page) flush() {
	switch p.openN {
	case 0:
	case 1:
		// A copy: the event frame alone must not hold the batch's buffer
		// while it is queued.
		p.frames = append(p.frames, pageFrame{p.last, 1, append([]byte(nil), p.open[p.openAt:]...), "event"})
	default:
		p.frames = append(p.frames, pageFrame{p.last, p.openN, append(p.open, "]}"...), "events"})
	}
	p.open, p.openN = nil, 0
}

// pushPage queues a frame of a page: a batch only while fewer than
// maxQueuedBatches frames are queued.
func (c *conn) pushPage(f pageFrame) bool {
	limit := c.g.o.SendQueue
	if f.typ == "events" {
		limit = min(limit, maxQueuedBatches)
	}
	return c.pushWithin(outFrame{b: f.b, typ: f.typ}, limit)
}
