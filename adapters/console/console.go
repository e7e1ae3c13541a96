// Package console serves the admin console (client/web/console, built by
// client/web's `npm run build`) from assets embedded in the binary, so
// `mdsync serve` serves it on a machine without Node. The assets are
// committed; the package's test fails when they are stale (manifest.json
// records a hash of the sources they were built from).
package console

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed assets
var assets embed.FS

// Prefix is where serve mounts the console.
const Prefix = "/console/"

// Handler serves the console under Prefix. The page only talks to its own
// origin: a strict Content-Security-Policy says so.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == Prefix+"manifest.json" {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
