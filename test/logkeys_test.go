package test

import (
	"go/ast"
	"go/token"
	"strconv"
	"strings"
	"testing"
)

// logKeys maps a spelling of a log attribute key that the tree no longer
// uses to the one it uses for the same concept. One key per concept lets an
// operator query the logs of every component alike (err=..., device_id=...).
var logKeys = map[string]string{
	"error":  "err",       // an error value
	"device": "device_id", // a device ID
	"client": "client_id", // an MQTT client ID
}

// slogMethods are the names of log/slog's logging functions and methods.
var slogMethods = map[string]bool{
	"Debug": true, "Info": true, "Warn": true, "Error": true, "Log": true, "With": true,
	"DebugContext": true, "InfoContext": true, "WarnContext": true, "ErrorContext": true,
}

// slogAttrs are log/slog's attribute constructors: their first argument is
// the key.
var slogAttrs = map[string]bool{
	"String": true, "Any": true, "Int": true, "Int64": true, "Uint64": true, "Float64": true,
	"Bool": true, "Duration": true, "Time": true, "Group": true,
}

// TestLogKeys fails for a log call that spells a key the way logKeys
// retires. A log call is a call of a slog function or method, or of any
// function whose name says it logs (the tree's wrappers, such as
// loglimit.Limiter.Log); its keys are the string literals at the key
// positions of its trailing key-value pairs, and the keys of slog
// attributes.
func TestLogKeys(t *testing.T) {
	fset, files := parseTree(t)
	n := 0
	for _, f := range files {
		ast.Inspect(f.file, func(node ast.Node) bool {
			var keys []ast.Expr
			switch node := node.(type) {
			case *ast.CallExpr:
				name, pkg := callee(node)
				switch {
				case pkg == "slog" && slogAttrs[name] && len(node.Args) > 0:
					keys = append(keys, node.Args[0])
				case (slogMethods[name] || strings.Contains(strings.ToLower(name), "log")) && !node.Ellipsis.IsValid():
					// Key-value pairs end the argument list.
					for i := len(node.Args) - 2; i >= 0; i -= 2 {
						keys = append(keys, node.Args[i])
					}
				}
			case *ast.CompositeLit:
				if sel, ok := node.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "Attr" && isIdent(sel.X, "slog") {
					for _, e := range node.Elts {
						if kv, ok := e.(*ast.KeyValueExpr); ok && isIdent(kv.Key, "Key") {
							keys = append(keys, kv.Value)
						}
					}
				}
			}
			for _, k := range keys {
				lit, ok := k.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil {
					continue
				}
				n++
				if want, retired := logKeys[s]; retired {
					t.Errorf("%s: log key %q: this tree spells it %q", fset.Position(lit.Pos()), s, want)
				}
			}
			return true
		})
	}
	if n < 500 {
		t.Fatalf("found only %d log keys: the test no longer recognizes the tree's log calls", n)
	}
}

// callee returns the name of the function a call calls and, for a
// qualified call (x.F), the name of x when it is an identifier.
func callee(c *ast.CallExpr) (name, x string) {
	switch fn := c.Fun.(type) {
	case *ast.Ident:
		return fn.Name, ""
	case *ast.SelectorExpr:
		if id, ok := fn.X.(*ast.Ident); ok {
			x = id.Name
		}
		return fn.Sel.Name, x
	}
	return "", ""
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}
