package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// errHelp ends a command after it printed its help.
var errHelp = errors.New("help")

// flagSet is a flag.FlagSet that reports bad flags as a one-line
// usageError and can hide flags from the help.
type flagSet struct {
	*flag.FlagSet
	name   string
	doc    string
	hidden map[string]bool
	out    io.Writer
}

func newFlagSet(name, doc string, out io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), name: name, doc: doc, hidden: map[string]bool{}, out: out}
	fs.SetOutput(io.Discard)
	return fs
}

// hide keeps the named flag out of the help.
func (fs *flagSet) hide(name string) { fs.hidden[name] = true }

// parse parses args. -h prints the help to the command's output and returns
// errHelp; a bad flag returns a usageError.
func (fs *flagSet) parse(args []string) error {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.printHelp()
		return errHelp
	case err != nil:
		return usageError{fmt.Sprintf("%s: %v (see xmpptrack %s -h)", fs.name, err, fs.name)}
	case fs.NArg() > 0:
		return usageError{fmt.Sprintf("%s: unexpected argument %q (see xmpptrack %s -h)", fs.name, fs.Arg(0), fs.name)}
	}
	return nil
}

func (fs *flagSet) printHelp() {
	fmt.Fprintf(fs.out, "usage: xmpptrack %s [flags]\n\n%s\nFlags:\n", fs.name, fs.doc)
	fs.VisitAll(func(f *flag.Flag) {
		if fs.hidden[f.Name] {
			return
		}
		name, help := flag.UnquoteUsage(f)
		line := "  -" + f.Name
		if name != "" {
			line += " " + name
		}
		fmt.Fprintf(fs.out, "%-20s %s", line, help)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			fmt.Fprintf(fs.out, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(fs.out)
	})
}

// envOr returns the environment variable key, or def when it is unset or
// empty.
func envOr(key, def string) string {
	if v := strings.TrimSpace(os.Getenv(key)); v != "" {
		return v
	}
	return def
}
