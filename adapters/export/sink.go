package export

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/engine"
	"github.com/parquet-go/parquet-go"
)

// ---- sinks ----

// sink receives rows; commit makes every row so far durable and
// then records pos; abort drops what was not committed.
type sink interface {
	write(r *opjson.Row) error
	commit(pos *position) error
	abort()
}

// openSink loads the position file, or starts one, and opens the output
// for appending after the recorded position.
func openSink(cfg Config, posFile string, fresh *position) (sink, *position, error) {
	pos := fresh
	b, err := os.ReadFile(posFile)
	switch {
	case err == nil:
		pos = &position{}
		if err := json.Unmarshal(b, pos); err != nil {
			return nil, nil, engine.Errorf(engine.CodeInvalidArgument, "export: position file %s: %v", posFile, err)
		}
		if pos.Version != positionVersion || pos.Format != cfg.Format {
			return nil, nil, engine.Errorf(engine.CodeConflict, "export: position file %s is version %d format %q; this run writes version %d format %q",
				posFile, pos.Version, pos.Format, positionVersion, cfg.Format)
		}
		if pos.Selection != fresh.Selection || len(pos.Next) != len(fresh.Next) {
			return nil, nil, engine.Errorf(engine.CodeConflict, "export: position file %s selected %+v; this run selects %+v (a resumed export must select the same records)",
				posFile, pos.Selection, fresh.Selection)
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, nil, fmt.Errorf("export: %w", err)
	}
	resumed := err == nil
	if cfg.Format == "jsonl" {
		s, err := openJSONL(cfg.Out, posFile, pos, resumed)
		return s, pos, err
	}
	s, err := openParquetDir(cfg.Out, posFile, pos, resumed)
	return s, pos, err
}

// writePosition replaces the position file atomically: a temporary file,
// fsync, rename, fsync of the directory.
func writePosition(path string, pos *position) error {
	b, err := json.Marshal(pos)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := writeFileSync(tmp, append(b, '\n')); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// jsonlSink appends JSON lines to one file (or writes them to stdout).
type jsonlSink struct {
	f       *os.File // nil for stdout
	w       *bufio.Writer
	posFile string
	written int64 // bytes in the file, committed or not
}

func openJSONL(out, posFile string, pos *position, resumed bool) (*jsonlSink, error) {
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	switch {
	case !resumed && st.Size() > 0:
		f.Close()
		return nil, engine.Errorf(engine.CodeConflict, "export: %s is not empty and has no position file %s; remove it or give its position file", out, posFile)
	case resumed && st.Size() < pos.Bytes:
		f.Close()
		return nil, engine.Errorf(engine.CodeConflict, "export: %s has %d bytes, its position file says %d were written: the output lost data", out, st.Size(), pos.Bytes)
	}
	// Rows written after the last position update are cut: they are read
	// from the log again.
	if err := f.Truncate(pos.Bytes); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(pos.Bytes, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	s := &jsonlSink{f: f, w: bufio.NewWriterSize(f, 256<<10), posFile: posFile, written: pos.Bytes}
	if !resumed {
		// The position file exists before any data: an output without one
		// is never mistaken for an interrupted export.
		if err := writePosition(posFile, pos); err != nil {
			f.Close()
			return nil, fmt.Errorf("export: %w", err)
		}
	}
	return s, nil
}

func (s *jsonlSink) write(r *opjson.Row) error {
	b, err := opjson.Marshal(r)
	if err != nil {
		return err
	}
	n, err := s.w.Write(append(b, '\n'))
	s.written += int64(n)
	return err
}

func (s *jsonlSink) commit(pos *position) error {
	if err := s.w.Flush(); err != nil {
		return err
	}
	if s.f == nil {
		return nil
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	pos.Bytes = s.written
	return writePosition(s.posFile, pos)
}

func (s *jsonlSink) abort() {
	if s.f != nil {
		s.f.Close() // uncommitted bytes are cut by the next run
	}
}

// parquetSink writes one Parquet file per chunk: Parquet files are
// immutable, so a chunk is written to a temporary name and renamed into
// place before the position file lists it.
type parquetSink struct {
	dir, posFile string
	tmp          *os.File
	w            *parquet.GenericWriter[parquetRow]
	rows         int
}

func openParquetDir(dir, posFile string, pos *position, resumed bool) (*parquetSink, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	listed := map[string]bool{}
	for _, f := range pos.Files {
		listed[f] = true
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "part-") || listed[name] {
			continue
		}
		if !resumed && strings.HasSuffix(name, ".parquet") {
			return nil, engine.Errorf(engine.CodeConflict, "export: %s holds Parquet files but no position file %s; use an empty directory or give its position file", dir, posFile)
		}
		// Written after the last position update: its rows come again.
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	for f := range listed {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, engine.Errorf(engine.CodeConflict, "export: %s is listed in %s but missing: the output lost data", f, posFile)
		}
	}
	if !resumed {
		if err := writePosition(posFile, pos); err != nil {
			return nil, fmt.Errorf("export: %w", err)
		}
	}
	return &parquetSink{dir: dir, posFile: posFile}, nil
}

// partName is the n-th committed file's name (1-based); names sort in
// export order.
func partName(n int) string { return fmt.Sprintf("part-%06d.parquet", n) }

func (s *parquetSink) write(r *opjson.Row) error {
	if s.w == nil {
		f, err := os.CreateTemp(s.dir, "part-*.tmp")
		if err != nil {
			return err
		}
		s.tmp = f
		s.w = parquet.NewGenericWriter[parquetRow](f, parquet.Compression(&parquet.Zstd))
	}
	_, err := s.w.Write([]parquetRow{parquetRowOf(r)})
	s.rows++
	return err
}

func (s *parquetSink) commit(pos *position) error {
	if s.w != nil {
		if err := s.w.Close(); err != nil {
			return err
		}
		if err := s.tmp.Sync(); err != nil {
			return err
		}
		if err := s.tmp.Close(); err != nil {
			return err
		}
		name := partName(len(pos.Files) + 1)
		if err := os.Rename(s.tmp.Name(), filepath.Join(s.dir, name)); err != nil {
			return err
		}
		if err := syncDir(s.dir); err != nil {
			return err
		}
		pos.Files = append(pos.Files, name)
		s.w, s.tmp, s.rows = nil, nil, 0
	}
	return writePosition(s.posFile, pos)
}

func (s *parquetSink) abort() {
	if s.tmp != nil {
		s.tmp.Close()
		os.Remove(s.tmp.Name())
	}
}
