// Command devprosody runs a throw-away XMPP server for development, the demo
// and benchmarks, until it is interrupted: Prosody 0.12 by default, or
// ejabberd 23.01 with -server ejabberd, configured as the integration tests
// configure it.
//
// Usage:
//
//	devprosody [-server prosody|ejabberd] [-users alice:secret,bob:secret] [-env FILE] [-hibernation 60s] [-muc-restricted] [-log-level info]
//
// Once the server accepts clients it prints shell-style lines
//
//	XMPP_ADDR=127.0.0.1:PORT
//	XMPP_DOMAIN=localhost
//	XMPP_MUC=conference.localhost
//	XMPP_CA=/path/to/ca.crt
//	XMPP_LOG=/path/to/the/server.log
//
// to standard output and, with -env, to FILE (which a shell can source). On
// SIGINT or SIGTERM it stops the server, removes its files (and FILE) and
// exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/integration/servers"
)

// errUsage reports bad flags, which the flag package has already explained.
var errUsage = errors.New("usage")

func main() {
	err := run(os.Args[1:], os.Stdout)
	switch {
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintf(os.Stderr, "devprosody: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	flags := flag.NewFlagSet("devprosody", flag.ContinueOnError)
	var (
		server      = flags.String("server", servers.Prosody, "the server to run: "+servers.Prosody+" or "+servers.Ejabberd)
		users       = flags.String("users", "", "accounts to create, as `user:password,...`")
		envFile     = flags.String("env", "", "also write the XMPP_* lines to `FILE`")
		hibernation = flags.Duration("hibernation", prosody.DefaultHibernationTime, "how long a broken stream management session can be resumed")
		restricted  = flags.Bool("muc-restricted", false, "allow only admins to create rooms (restrict_room_creation)")
		logLevel    = flags.String("log-level", "info", "the server's log level: debug, info, warn or error")
	)
	flags.Usage = func() {
		fmt.Fprintln(flags.Output(), "usage: devprosody [flags]\n\nRuns a throw-away Prosody (or ejabberd) on 127.0.0.1 until interrupted.\n\nFlags:")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", flags.Args())
	}
	accounts, err := parseUsers(*users)
	if err != nil {
		return err
	}
	kind, err := servers.Lookup(*server)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), kind.StartTimeout())
	defer cancel()
	srv, err := kind.Start(ctx, servers.Options{
		Users:                accounts,
		ResumeTimeout:        *hibernation,
		RestrictRoomCreation: *restricted,
		LogLevel:             *logLevel,
	})
	if err != nil {
		if errors.Is(err, servers.ErrNotInstalled) {
			return fmt.Errorf("%w (run \"make %s-install\" or \"apt-get install %s\")", err, kind, kind)
		}
		return err
	}
	// Stop on any way out, including a failure to write the env file.
	stopped := false
	defer func() {
		if !stopped {
			srv.Stop()
		}
	}()

	// Listen for signals before announcing the server, so that a signal sent
	// as soon as the lines appear is not lost.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)

	env := fmt.Sprintf("XMPP_ADDR=%s\nXMPP_DOMAIN=%s\nXMPP_MUC=%s\nXMPP_CA=%s\nXMPP_LOG=%s\n",
		shellQuote(srv.Addr()), shellQuote(srv.Domain()), shellQuote(srv.MUCDomain()),
		shellQuote(srv.CAFile()), shellQuote(srv.LogPath()))
	if *envFile != "" {
		if err := writeFileAtomic(*envFile, env); err != nil {
			return fmt.Errorf("writing env file: %w", err)
		}
		defer os.Remove(*envFile)
	}
	if _, err := io.WriteString(stdout, env); err != nil {
		return err
	}

	s := <-sig
	fmt.Fprintf(os.Stderr, "devprosody: %v, stopping\n", s)
	stopped = true
	if err := srv.Stop(); err != nil {
		return err
	}
	return nil
}

// parseUsers parses "user:password,user:password".
func parseUsers(s string) (map[string]string, error) {
	users := make(map[string]string)
	if s == "" {
		return users, nil
	}
	for _, pair := range strings.Split(s, ",") {
		user, pass, ok := strings.Cut(pair, ":")
		if !ok || user == "" || pass == "" {
			return nil, fmt.Errorf("-users: %q is not user:password", pair)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("-users: %q given twice", user)
		}
		users[user] = pass
	}
	return users, nil
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/@%+=,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// writeFileAtomic writes data to name through a temporary file, so that a
// reader polling for name never sees half of it.
func writeFileAtomic(name, data string) error {
	tmp := fmt.Sprintf("%s.tmp-%d-%d", name, os.Getpid(), time.Now().UnixNano())
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
