// Package docs holds the tests that keep the documentation true to the
// code.
package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// declared maps a package name to the names declared at its top level:
// "Func", "Type", "Type.Method" (methods of concrete and interface types),
// "Const", "Var". Packages that share a name (main) are merged.
func declared(t *testing.T, root string) map[string]map[string]bool {
	t.Helper()
	out := map[string]map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "node_modules" || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		names := out[f.Name.Name]
		if names == nil {
			names = map[string]bool{}
			out[f.Name.Name] = names
		}
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil || len(d.Recv.List) == 0 {
					names[d.Name.Name] = true
					continue
				}
				if recv := receiverType(d.Recv.List[0].Type); recv != "" {
					names[recv+"."+d.Name.Name] = true
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					switch s := spec.(type) {
					case *ast.TypeSpec:
						names[s.Name.Name] = true
						if it, ok := s.Type.(*ast.InterfaceType); ok {
							for _, m := range it.Methods.List {
								for _, n := range m.Names {
									names[s.Name.Name+"."+n.Name] = true
								}
							}
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							names[n.Name] = true
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// receiverType is the type name of a method's receiver: T, *T, T[P], *T[P].
func receiverType(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.StarExpr:
		return receiverType(x.X)
	case *ast.IndexExpr:
		return receiverType(x.X)
	case *ast.IndexListExpr:
		return receiverType(x.X)
	case *ast.Ident:
		return x.Name
	}
	return ""
}

var (
	codeSpan = regexp.MustCompile("`([^`\n]+)`")
	// qualified is package.Name or package.Type.Method.
	qualified = regexp.MustCompile(`^([a-z][a-z0-9]*)\.([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?$`)
	fileName  = regexp.MustCompile(`\.(go|md|json|yaml|txt)$`)
)

// Every package.Function the architecture page names exists in the tree,
// so the two flows it walks through stay true as the code moves.
func TestArchitectureNamesExist(t *testing.T) {
	doc, err := os.ReadFile("architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	decls := declared(t, "..")
	checked := 0
	for _, m := range codeSpan.FindAllStringSubmatch(string(doc), -1) {
		span := m[1]
		q := qualified.FindStringSubmatch(span)
		if q == nil || fileName.MatchString(span) {
			continue
		}
		pkg, name := q[1], q[2]
		if q[3] != "" {
			name += "." + q[3]
		}
		names, ok := decls[pkg]
		if !ok {
			t.Errorf("architecture.md names %s: no package %s in the tree", span, pkg)
			continue
		}
		if !names[name] {
			t.Errorf("architecture.md names %s: package %s declares no %s", span, pkg, name)
			continue
		}
		checked++
	}
	if checked < 40 {
		t.Fatalf("only %d names checked: did the page lose its steps, or the pattern its matches?", checked)
	}
	t.Logf("%d names checked", checked)
}
