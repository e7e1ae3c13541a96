package logsource

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/projections"
)

// Held reports whether a process (another, or this one) holds the Pebble
// lock of dir: a server is running on it, and opening it would fail.
func Held(dir string) bool {
	l, err := pebble.LockDirectory(dir, vfs.Default)
	if err != nil {
		return true
	}
	l.Close()
	return false
}

// maxSnapshotTries bounds the retries of SnapshotOpen: each try fails only
// when the server flushed or compacted between the file copies and the
// manifest copy, which takes far longer than one try.
const maxSnapshotTries = 20

// Mode says how a snapshot holds the database's table files.
type Mode int

const (
	// Copy copies every file: the snapshot may be opened for writing.
	Copy Mode = iota
	// Link hard-links the immutable table and blob files (copying them when
	// a link is not possible, across file systems) and copies the rest.
	// Only for a database opened read-only: a writer could create a file
	// number the server also uses and truncate the server's file through
	// the shared inode.
	Link
)

// SnapshotOpen makes a private, consistent copy of the Pebble database in
// src (a running server's: the server is not disturbed, nothing in src is
// written or locked) in a new directory under parent ("" = os.TempDir),
// and opens it with open. Immutable files are taken first, then the
// write-ahead logs, then the manifest and its marker last: a manifest that
// names a file the copy lacks (the server flushed or compacted meanwhile)
// fails Pebble's consistency check at open, and the copy is made again. A
// write-ahead log's torn tail is read as its end. cleanup closes nothing:
// it removes the directory, after the caller closed what open returned.
func SnapshotOpen[T any](src, parent string, mode Mode, open func(dir string) (T, error)) (v T, cleanup func(), err error) {
	var errs []error
	for try := 0; try < maxSnapshotTries; try++ {
		dir, err := os.MkdirTemp(parent, "mdsync-snapshot-")
		if err != nil {
			return v, nil, err
		}
		if err := snapshot(src, dir, mode); err != nil {
			os.RemoveAll(dir)
			return v, nil, fmt.Errorf("logsource: snapshot of %s: %w", src, err)
		}
		v, err = open(dir)
		if err == nil {
			return v, func() { os.RemoveAll(dir) }, nil
		}
		os.RemoveAll(dir)
		errs = append(errs, err)
	}
	return v, nil, fmt.Errorf("logsource: no consistent snapshot of %s in %d tries: %w", src, maxSnapshotTries, errors.Join(errs...))
}

// snapshot copies src into the empty directory dst (see SnapshotOpen for
// the order).
func snapshot(src, dst string, mode Mode) error {
	names, err := listDir(src)
	if err != nil {
		return err
	}
	var wals []string
	for _, n := range names {
		switch {
		case strings.HasSuffix(n, ".sst") || strings.HasSuffix(n, ".blob"):
			if err := take(src, dst, n, mode); err != nil {
				return err
			}
		case strings.HasSuffix(n, ".log"):
			wals = append(wals, n)
		}
	}
	// Names are zero-padded file numbers: sorted is oldest first.
	for _, n := range wals {
		if err := take(src, dst, n, Copy); err != nil {
			return err
		}
	}
	// Now the manifest: list again (it may have been rotated), and copy the
	// current manifest's marker after the manifests it may name.
	if names, err = listDir(src); err != nil {
		return err
	}
	var markers []string
	for _, n := range names {
		switch {
		case strings.HasPrefix(n, "marker."):
			markers = append(markers, n)
		case strings.HasPrefix(n, "MANIFEST-"), strings.HasPrefix(n, "OPTIONS-"), n == "CURRENT":
			if err := take(src, dst, n, Copy); err != nil {
				return err
			}
		}
	}
	for _, n := range markers {
		if err := take(src, dst, n, Copy); err != nil {
			return err
		}
	}
	return nil
}

func listDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// take links or copies src/name into dst. A file the server removed
// meanwhile is skipped: if the copy needed it, opening the copy fails and
// the snapshot is made again.
func take(src, dst, name string, mode Mode) error {
	from, to := filepath.Join(src, name), filepath.Join(dst, name)
	if mode == Link && os.Link(from, to) == nil {
		return nil
	}
	in, err := os.Open(from)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// SnapshotDir copies the Pebble database in src into a new directory
// under parent ("" = os.TempDir), checked consistent by opening it
// read-only, for a caller that opens it itself (read-write: every file is
// a copy). cleanup removes it.
func SnapshotDir(src, parent string) (dir string, cleanup func(), err error) {
	return SnapshotOpen(src, parent, Copy, func(dir string) (string, error) {
		db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Logger: projections.PebbleLogger(nil)})
		if err != nil {
			return "", err
		}
		return dir, db.Close()
	})
}
