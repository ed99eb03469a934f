package test

import (
	"go/ast"
	"go/token"
	"strings"
	"testing"
)

// TestProtocolConstantsNotCopied fails for a copy, outside pkg/wire, of
// the SHA-256 algorithm ID as a PCR bank (use wire.AlgSHA256) or of the
// default PCR list (use wire.DefaultPCRs or wire.DefaultSelection): copies
// drift apart.
//
// A copy of the algorithm ID is 0x000B as a Hash field, a constant or
// compared with a Hash field; a copy of the list is []int{0, …, 9, 14} in
// code, or as a PCRs field in tests (elsewhere in tests the same PCRs may be
// a fact about a fixture, such as the PCRs a recorded event log covers).
func TestProtocolConstantsNotCopied(t *testing.T) {
	fset, files := parseTree(t)
	for _, f := range files {
		if strings.HasPrefix(f.path, "pkg/wire/") {
			continue
		}
		isTest := strings.HasSuffix(f.path, "_test.go")
		var stack []ast.Node
		ast.Inspect(f.file, func(n ast.Node) bool {
			if n == nil {
				stack = stack[:len(stack)-1]
				return true
			}
			var parent ast.Node
			if len(stack) > 0 {
				parent = stack[len(stack)-1]
			}
			stack = append(stack, n)
			switch n := n.(type) {
			case *ast.BasicLit:
				if n.Kind == token.INT && strings.EqualFold(n.Value, "0x000b") && algIDUse(parent, n) {
					t.Errorf("%s: TPM_ALG_SHA256 written out: use wire.AlgSHA256", fset.Position(n.Pos()))
				}
			case *ast.CompositeLit:
				if isDefaultPCRs(n) && (!isTest || isField(parent, n, "PCRs")) {
					t.Errorf("%s: the default PCR list written out: use wire.DefaultPCRs or wire.DefaultSelection", fset.Position(n.Pos()))
				}
			}
			return true
		})
	}
}

// algIDUse reports whether lit, a child of parent, stands for a PCR bank:
// a Hash field's value, a constant, or an operand compared with a Hash
// field.
func algIDUse(parent ast.Node, lit ast.Expr) bool {
	switch p := parent.(type) {
	case *ast.KeyValueExpr:
		return isField(p, lit, "Hash")
	case *ast.ValueSpec:
		return true
	case *ast.BinaryExpr:
		other := p.X
		if other == lit {
			other = p.Y
		}
		sel, ok := other.(*ast.SelectorExpr)
		return ok && sel.Sel.Name == "Hash"
	}
	return false
}

// isField reports whether v is the value of the field name in a composite
// literal (parent is the key-value pair).
func isField(parent ast.Node, v ast.Expr, name string) bool {
	kv, ok := parent.(*ast.KeyValueExpr)
	if !ok || kv.Value != v {
		return false
	}
	id, ok := kv.Key.(*ast.Ident)
	return ok && id.Name == name
}

// isDefaultPCRs reports whether lit is []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}.
func isDefaultPCRs(lit *ast.CompositeLit) bool {
	arr, ok := lit.Type.(*ast.ArrayType)
	if !ok || arr.Len != nil {
		return false
	}
	if id, ok := arr.Elt.(*ast.Ident); !ok || id.Name != "int" {
		return false
	}
	var vals []string
	for _, e := range lit.Elts {
		b, ok := e.(*ast.BasicLit)
		if !ok {
			return false
		}
		vals = append(vals, b.Value)
	}
	return strings.Join(vals, ",") == "0,1,2,3,4,5,6,7,8,9,14"
}
