package main

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestParseSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "mdsync.json")
	if err := os.WriteFile(cfg, []byte(`{"addr":"127.0.0.1:9000","partitions":4,"log-format":"json","data":"fromfile"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MDSYNC_LOG_FORMAT", "text")
	t.Setenv("MDSYNC_DATA", "fromenv")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "")
	parts := fs.Int("partitions", 8, "")
	format := fs.String("log-format", "text", "")
	data := fs.String("data", "data", "")
	other := fs.String("other", "dflt", "")
	if err := parseSettings(fs, []string{"--config", cfg, "--data", "fromflag"}); err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][2]string{
		"file beats default": {*addr, "127.0.0.1:9000"},
		"file number":        {strconv.Itoa(*parts), "4"},
		"env beats file":     {*format, "text"},
		"flag beats env":     {*data, "fromflag"},
		"default":            {*other, "dflt"},
	} {
		if got[0] != got[1] {
			t.Errorf("%s: got %q, want %q", name, got[0], got[1])
		}
	}
}

func TestParseSettingsRefusesUnknownAndBadValues(t *testing.T) {
	dir := t.TempDir()
	for body, want := range map[string]string{
		`{"adr":"x"}`:           `unknown setting "adr"`,
		`{"partitions":"many"}`: "partitions",
		`[1,2]`:                 "not a JSON object",
	} {
		cfg := filepath.Join(dir, "c.json")
		os.WriteFile(cfg, []byte(body), 0o600)
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.String("addr", "", "")
		fs.Int("partitions", 8, "")
		err := parseSettings(fs, []string{"--config", cfg})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want it to mention %q", body, err, want)
		}
	}
}
