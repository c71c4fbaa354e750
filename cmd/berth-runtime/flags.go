package main

// The command line is parsed with the standard library's flag package and a
// small scanner of its own instead of cobra: cobra brings pflag (which
// imports net) and text/template, whose initialisation costs milliseconds
// on every run, and berth-runtime runs two or three times per container.
// The scanner keeps the GNU-style syntax the cobra version accepted (and
// runc's callers use): --name value, --name=value, -n value, -nvalue,
// clustered single-letter booleans (-dt), flags after the operands, and --
// to end the flags.

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// flagSet is a flag.FlagSet with single-letter aliases.
type flagSet struct {
	*flag.FlagSet
	short map[string]string // letter -> long name
}

func newFlagSet(name string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flagSet{FlagSet: fs, short: map[string]string{}}
}

func (f *flagSet) alias(long, short string) {
	if short != "" {
		f.short[short] = long
	}
}

func (f *flagSet) stringVar(p *string, long, short, def, usage string) {
	f.StringVar(p, long, def, usage)
	f.alias(long, short)
}

func (f *flagSet) boolVar(p *bool, long, short string, usage string) {
	f.BoolVar(p, long, false, usage)
	f.alias(long, short)
}

func (f *flagSet) intVar(p *int, long, short string, usage string) {
	f.Var((*intValue)(p), long, usage)
	f.alias(long, short)
}

// stringsVar is a repeatable flag: each occurrence adds one value, commas
// included (an environment variable's value may hold commas).
func (f *flagSet) stringsVar(p *[]string, long, short, usage string) {
	f.Var((*stringsValue)(p), long, usage)
	f.alias(long, short)
}

// intsVar is a repeatable flag whose occurrences also take comma-separated
// lists: -g 1,2 -g 3.
func (f *flagSet) intsVar(p *[]int, long, short, usage string) {
	f.Var((*intsValue)(p), long, usage)
	f.alias(long, short)
}

// changed reports whether the command line set the flag.
func (f *flagSet) changed(name string) bool {
	found := false
	f.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
	return found
}

// intValue is flag's int but for its error, which names what was wrong
// ("parsing "abc": invalid syntax") where flag's says "parse error".
type intValue int

func (v *intValue) String() string { return strconv.Itoa(int(*v)) }
func (v *intValue) Set(s string) error {
	n, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return err
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) Type() string { return "int" }

type stringsValue []string

func (v *stringsValue) String() string { return fmt.Sprint([]string(*v)) }
func (v *stringsValue) Set(s string) error {
	*v = append(*v, s)
	return nil
}
func (v *stringsValue) Type() string { return "stringArray" }

type intsValue []int

func (v *intsValue) String() string { return fmt.Sprint([]int(*v)) }
func (v *intsValue) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil {
			return err
		}
		*v = append(*v, n)
	}
	return nil
}
func (v *intsValue) Type() string { return "ints" }

func isBool(fl *flag.Flag) bool {
	b, ok := fl.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// lookup finds a flag by long name, or by letter when short is true, in
// the first of sets that has it.
func lookup(sets []*flagSet, name string, short bool) (*flagSet, *flag.Flag) {
	for _, s := range sets {
		long := name
		if short {
			l, ok := s.short[name]
			if !ok {
				continue
			}
			long = l
		}
		if fl := s.Lookup(long); fl != nil {
			return s, fl
		}
	}
	return nil, nil
}

// parseFlags sets the flags args names, looking each up in sets in turn,
// and returns the operands. With interspersed, flags may follow operands;
// without, the first operand ends the flags (exec and ps, whose operands
// end with a command line of their own).
func parseFlags(args []string, interspersed bool, sets ...*flagSet) ([]string, error) {
	var operands []string
	for len(args) > 0 {
		a := args[0]
		args = args[1:]
		switch {
		case a == "--":
			return append(operands, args...), nil
		case len(a) < 2 || a[0] != '-':
			operands = append(operands, a)
			if !interspersed {
				return append(operands, args...), nil
			}
			continue
		}
		var err error
		if args, err = parseOne(a, args, sets); err != nil {
			return nil, err
		}
	}
	return operands, nil
}

// parseOne sets the flag (or the cluster of single-letter flags) a names,
// taking its value from rest if it needs one, and returns what is left.
func parseOne(a string, rest []string, sets []*flagSet) ([]string, error) {
	long := strings.TrimPrefix(a, "--")
	if long == a {
		// runc (Go's flag package) also accepts -root: a single dash
		// before a long name is one flag, not a cluster.
		if name, _, _ := strings.Cut(a[1:], "="); len(name) > 1 {
			if _, fl := lookup(sets, name, false); fl != nil {
				long = a[1:]
			}
		}
	}
	if long != a {
		name, value, hasValue := strings.Cut(long, "=")
		if name == "" || name[0] == '-' {
			return nil, fmt.Errorf("bad flag syntax: %s", a)
		}
		fs, fl := lookup(sets, name, false)
		if fl == nil {
			return nil, fmt.Errorf("unknown flag: --%s", name)
		}
		switch {
		case hasValue:
		case isBool(fl):
			value = "true"
		case len(rest) == 0:
			return nil, fmt.Errorf("flag needs an argument: --%s", name)
		default:
			value, rest = rest[0], rest[1:]
		}
		return rest, set(fs, fl, value)
	}
	// -abc: single-letter flags; the last may take a value, attached
	// (-fjson, -f=json) or as the next argument (-f json).
	for s := a[1:]; s != ""; {
		c := s[:1]
		s = s[1:]
		fs, fl := lookup(sets, c, true)
		if fl == nil {
			return nil, fmt.Errorf("unknown shorthand flag: '%s' in %s", c, a)
		}
		value := "true"
		switch {
		case strings.HasPrefix(s, "="):
			value, s = s[1:], ""
		case isBool(fl):
		case s != "":
			value, s = s, ""
		case len(rest) == 0:
			return nil, fmt.Errorf("flag needs an argument: '%s' in %s", c, a)
		default:
			value, rest = rest[0], rest[1:]
		}
		if err := set(fs, fl, value); err != nil {
			return nil, err
		}
	}
	return rest, nil
}

func set(fs *flagSet, fl *flag.Flag, value string) error {
	if err := fs.Set(fl.Name, value); err != nil {
		return fmt.Errorf("invalid argument %q for %q flag: %w", value, fs.display(fl), err)
	}
	return nil
}

// display names a flag as help shows it: "-b, --bundle" or "--root".
func (f *flagSet) display(fl *flag.Flag) string {
	if s := f.letter(fl.Name); s != "" {
		return "-" + s + ", --" + fl.Name
	}
	return "--" + fl.Name
}

func (f *flagSet) letter(long string) string {
	for s, l := range f.short {
		if l == long {
			return s
		}
	}
	return ""
}

// usage writes one line per flag, sorted by name (VisitAll's order) and
// aligned, as cobra did, leaving out the flags shadow defines.
func (f *flagSet) usage(w io.Writer, shadow *flagSet) {
	type line struct{ left, right string }
	var lines []line
	width := 0
	f.VisitAll(func(fl *flag.Flag) {
		if shadow != nil && shadow.Lookup(fl.Name) != nil {
			return
		}
		left := "      --" + fl.Name
		if s := f.letter(fl.Name); s != "" {
			left = "  -" + s + ", --" + fl.Name
		}
		if t := typeName(fl); t != "" {
			left += " " + t
		}
		right := fl.Usage
		switch typeName(fl) {
		case "string":
			if fl.DefValue != "" {
				right += fmt.Sprintf(" (default %q)", fl.DefValue)
			}
		case "int":
			if fl.DefValue != "0" {
				right += " (default " + fl.DefValue + ")"
			}
		}
		width = max(width, len(left))
		lines = append(lines, line{left, right})
	})
	for _, l := range lines {
		fmt.Fprintf(w, "%-*s   %s\n", width, l.left, l.right)
	}
}

func typeName(fl *flag.Flag) string {
	if t, ok := fl.Value.(interface{ Type() string }); ok {
		return t.Type()
	}
	name, _ := flag.UnquoteUsage(fl)
	return name
}

// suggest returns the verbs within two edits of name or starting with it,
// as cobra's "Did you mean this?" did.
func suggest(name string, verbs []*verb) []string {
	var out []string
	for _, v := range verbs {
		if editDistance(name, v.name) <= 2 || strings.HasPrefix(v.name, name) {
			out = append(out, v.name)
		}
	}
	return out
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// verb is one of berth-runtime's commands.
type verb struct {
	name  string
	use   string // the usage line after the program's name
	short string
	flags *flagSet
	// interspersed lets flags follow the operands, as cobra did; exec and
	// ps stop at their first operand, since a command line follows it.
	interspersed bool
	wantHelp     bool
	// args checks the operands before the verb's set-up; nil takes any.
	args func([]string) error
	run  func(args []string) error
}

func newVerb(use, short string, run func([]string) error) *verb {
	name, _, _ := strings.Cut(use, " ")
	v := &verb{name: name, use: use, short: short, flags: newFlagSet(name), interspersed: true, run: run}
	v.flags.boolVar(&v.wantHelp, "help", "h", "help for "+name)
	return v
}

func (v *verb) help(w io.Writer, globals *flagSet) {
	fmt.Fprintf(w, "%s\n\nUsage:\n  berth-runtime %s\n\nFlags:\n", v.short, v.use)
	v.flags.usage(w, nil)
	fmt.Fprint(w, "\nGlobal Flags:\n")
	globals.usage(w, v.flags)
}

func oneID(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("expected exactly one container ID, got %d arguments", len(args))
	}
	return nil
}

func argsBetween(lo, hi int) func([]string) error {
	return func(args []string) error {
		if len(args) < lo || len(args) > hi {
			return fmt.Errorf("accepts between %d and %d arg(s), received %d", lo, hi, len(args))
		}
		return nil
	}
}

func argsAtLeast(n int) func([]string) error {
	return func(args []string) error {
		if len(args) < n {
			return fmt.Errorf("requires at least %d arg(s), only received %d", n, len(args))
		}
		return nil
	}
}

// noArgs refuses operands the way cobra did, naming the first as a command.
func noArgs(name string) func([]string) error {
	return func(args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown command %q for \"berth-runtime %s\"", args[0], name)
		}
		return nil
	}
}
