package console

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

type manifest struct {
	SourcesSHA256 string            `json:"sources_sha256"`
	Sources       []string          `json:"sources"`
	Assets        map[string]string `json:"assets"`
}

const repo = "../.."

// currentSources lists what client/web/scripts/build.mjs hashes, as it does.
func currentSources(t *testing.T) []string {
	var out []string
	for _, dir := range []string{"client/web/src", "client/web/console"} {
		err := filepath.WalkDir(filepath.Join(repo, dir), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(repo, p)
			out = append(out, filepath.ToSlash(rel))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	out = append(out, "client/web/scripts/build.mjs", "client/web/package-lock.json")
	slices.Sort(out)
	return out
}

// TestAssetsAreFresh fails when the committed console assets were not
// rebuilt after a change to the SDK or console sources (or were edited by
// hand). Fix: cd client/web && npm ci && npm run build, then commit
// adapters/console/assets.
func TestAssetsAreFresh(t *testing.T) {
	b, err := os.ReadFile("assets/manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	const fix = "rebuild: cd client/web && npm ci && npm run build, and commit adapters/console/assets"
	srcs := currentSources(t)
	if !slices.Equal(srcs, m.Sources) {
		t.Fatalf("the console's sources changed (now %v, built from %v); %s", srcs, m.Sources, fix)
	}
	h := sha256.New()
	for _, f := range srcs {
		data, err := os.ReadFile(filepath.Join(repo, f))
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(h, f+"\n")
		h.Write(data)
		io.WriteString(h, "\n")
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SourcesSHA256 {
		t.Fatalf("assets are stale: sources hash %s, assets built from %s; %s", got, m.SourcesSHA256, fix)
	}
	for name, want := range m.Assets {
		data, err := assets.ReadFile("assets/" + name)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Fatalf("asset %s was changed after the build; %s", name, fix)
		}
	}
}

func TestHandlerServesTheConsole(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle(Prefix, Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for path, want := range map[string]string{"/console/": "<title>mdsync console</title>", "/console/console.js": "", "/console/console.css": ""} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s: %d %q", path, resp.StatusCode, body[:min(len(body), 80)])
		}
		if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Fatalf("GET %s: no CSP", path)
		}
	}
	resp, _ := http.Get(srv.URL + "/console/manifest.json")
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("manifest served: %d", resp.StatusCode)
	}
}
