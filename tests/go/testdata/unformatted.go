// gofmt's input in tests/test_go_programs.py: not gofmt-formatted on purpose.
package   unformatted

import ("fmt"
"strings")

type point struct{x,y int
	name string}

func ( p point ) String( ) string { return fmt.Sprintf( "%s(%d,%d)",p.name,p.x ,p.y) }

func join(xs []string)string{
	var b strings.Builder
	for i:=0;i<len(xs);i++{ if i>0 { b.WriteString(",") }
	b.WriteString(xs[i : len(xs)][0])}
	return b.String()
}
var table = []point{ point{1,2,"a"}, point{ x:3, y:4, name:"b" }, }
