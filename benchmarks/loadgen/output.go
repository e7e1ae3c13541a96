package loadgen

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteOutputs writes NAME.md and the plots (and NAME.json when withJSON)
// into dir, and the Markdown to term when it is not nil.
func WriteOutputs(r *Report, dir string, withJSON bool, term io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	if withJSON {
		errs = append(errs, r.WriteJSON(filepath.Join(dir, r.Scenario.Name+".json")))
	}
	f, err := os.Create(filepath.Join(dir, r.Scenario.Name+".md"))
	if err != nil {
		return err
	}
	errs = append(errs, r.WriteMarkdown(f), f.Close())
	files, err := WritePlots(r, dir)
	errs = append(errs, err)
	if term != nil {
		errs = append(errs, r.WriteMarkdown(term))
		for _, f := range files {
			fmt.Fprintln(term, "wrote", f)
		}
	}
	return errors.Join(errs...)
}
