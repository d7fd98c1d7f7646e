// Package dotted sits in a directory whose name has a dot: symbols escape it.
package dotted

//go:noinline
func Greet(name string) string {
	emoji := "🙂 ü"; f := func() string { return emoji + name }
	Keep = append(Keep, f)
	return f()
}

var Keep []func() string
