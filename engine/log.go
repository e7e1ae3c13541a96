package engine

import (
	"context"
	"errors"
	"hash/fnv"
)

// Position is where a record sits in the log.
type Position struct {
	Partition int32
	Offset    int64
}

// Record is what Append writes. The caller chooses the partition (normally
// PartitionFor(Key, Partitions())): keeping the choice in the engine means
// every adapter partitions identically and rebuilds agree.
type Record struct {
	Partition int32
	Key       []byte
	Value     []byte
}

// Entry is a record read back from the log.
type Entry struct {
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
}

// Errors returned by Log implementations; match them with errors.Is.
var (
	ErrLogClosed      = errors.New("engine: log closed")
	ErrBadPartition   = errors.New("engine: partition out of range")
	ErrOffsetRange    = errors.New("engine: offset out of range")
	ErrRecordTooLarge = errors.New("engine: record too large")
	ErrEmptyAppend    = errors.New("engine: append of no records")
)

// Log is the port to the operation log: a fixed number of partitions, each
// an ordered sequence of records with dense offsets starting at 0.
//
// Implementations must be safe for concurrent use.
type Log interface {
	// Partitions returns the fixed partition count (>= 1).
	Partitions() int32

	// Append writes recs and returns their positions, in the order given.
	// On a nil error every record is durable: it survives a process crash
	// (and, for Kafka, is acknowledged by all in-sync replicas). Records for
	// the same partition get increasing offsets in the order given. Records
	// appended by one call to one partition are contiguous. On error, none,
	// some or all records may have been written (a caller that retries keeps
	// the same client op id, and projections drop duplicates). Append does
	// not retain recs' slices after it returns.
	Append(ctx context.Context, recs []Record) ([]Position, error)

	// Read returns up to max entries of partition p starting at offset from,
	// in offset order, only ever entries that are durable. When from equals
	// the end it waits until an entry is appended or ctx is done (then it
	// returns ctx.Err()). It returns ErrOffsetRange when from is below the
	// first retained offset or beyond the end. The returned slices belong to
	// the caller.
	Read(ctx context.Context, p int32, from int64, max int) ([]Entry, error)

	// End returns the offset the next record of partition p will get: the
	// number of records ever appended to it.
	End(ctx context.Context, p int32) (int64, error)

	// Close releases resources. Appends and reads in flight or made after
	// Close return ErrLogClosed. Close is idempotent.
	Close() error
}

// PartitionFor maps a stream key to a partition: FNV-1a 32 of the key,
// modulo the partition count. Every adapter uses the partition the engine
// chose (Record.Partition), so this function is the only partitioner.
func PartitionFor(key []byte, partitions int32) int32 {
	h := fnv.New32a()
	h.Write(key)
	return int32(h.Sum32() % uint32(partitions))
}
