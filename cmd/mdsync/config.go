package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
)

// parseSettings parses a subcommand's flags with three lower layers under
// them. Precedence, highest first: the command line, the environment
// (MDSYNC_<FLAG>, dashes as underscores), the config file (--config or
// MDSYNC_CONFIG: a JSON object keyed by flag name), the flag's default.
// Every flag is settable in all three, so the documentation lists flags once.
func parseSettings(fs *flag.FlagSet, args []string) error {
	config := fs.String("config", "", "JSON file of settings keyed by flag name (env MDSYNC_CONFIG)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })

	path := *config
	if path == "" {
		path = os.Getenv("MDSYNC_CONFIG")
	}
	fileValues := map[string]string{}
	if path != "" {
		var err error
		if fileValues, err = readConfig(fs, path); err != nil {
			return err
		}
	}
	var errs []string
	fs.VisitAll(func(f *flag.Flag) {
		if onCommandLine[f.Name] || f.Name == "config" {
			return
		}
		env := envName(f.Name)
		v, ok := os.LookupEnv(env)
		src := env
		if !ok {
			v, ok = fileValues[f.Name]
			src = path
		}
		if ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %s: %v", src, f.Name, err))
			}
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("settings: %s", strings.Join(errs, "; "))
	}
	return nil
}

// envOr returns the environment variable name, or def when it is unset.
// Commands that do not use parseSettings (the CLI, export) take their
// defaults from it.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// envName is the environment variable of a flag: data → MDSYNC_DATA.
func envName(flagName string) string {
	return "MDSYNC_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// maxConfigBytes bounds the config file: settings, not data.
const maxConfigBytes = 1 << 20

func readConfig(fs *flag.FlagSet, path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(b) > maxConfigBytes {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, maxConfigBytes)
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("config %s: not a JSON object: %w", path, err)
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		if fs.Lookup(k) == nil || k == "config" {
			// A typo must not silently fall back to a default.
			return nil, fmt.Errorf("config %s: unknown setting %q", path, k)
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			// Numbers and booleans are written as JSON literals.
			s = strings.TrimSpace(string(v))
		}
		out[k] = s
	}
	return out, nil
}
