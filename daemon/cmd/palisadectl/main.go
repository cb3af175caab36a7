// Command palisadectl shows what Palisade's policy does on this node: the
// agent's status, its pods and their compiled rules, live flow verdicts,
// and why a flow is allowed or dropped. It talks only to the local agent's
// unix socket, so it needs no kubeconfig; it must run as root on the node
// (kubectl exec into the agent's pod works too).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

const usage = `palisadectl shows what Palisade's network policy does on this node.

Usage:
  palisadectl status                         agent version, readiness, API connection, map fill
  palisadectl endpoints                      this node's pods: IPs, interface, identity, isolation, policies
  palisadectl policy NAMESPACE/POD           a pod's compiled allow rules, in words and as map entries
  palisadectl explain --from FROM --to TO[:PORT[/PROTOCOL]]
                                             would the datapath allow this flow, which policies say
                                             so, and what would allow it if not. FROM and TO are
                                             NAMESPACE/POD or an IP address ([IPv6]:PORT).
  palisadectl flows [--pod P] [--verdict dropped|allowed] [--follow]
                                             recent and live verdicts of this node's datapath

Every command takes:
  --socket PATH   the agent's socket (default $PALISADE_SOCKET or ` + agentapi.DefaultSocket + `)
  -o table|json   output format (default table); json is for scripts

Run palisadectl COMMAND --help for the command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command runs one subcommand with its remaining arguments.
type command func(ctx context.Context, c *cli, args []string) error

var commands = map[string]command{
	"status":    status,
	"endpoints": endpoints,
	"policy":    podPolicy,
	"explain":   explain,
	"flows":     flows,
}

// cli carries the common flags and the output streams.
type cli struct {
	socket string
	json   bool
	out    io.Writer
	errOut io.Writer
	client *agentapi.Client
}

// errUsage marks an error the user fixes by changing the command line.
type errUsage struct{ msg string }

func (e *errUsage) Error() string { return e.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "palisadectl: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	c := &cli{out: stdout, errOut: stderr}
	err := cmd(ctx, c, args[1:])
	var ue *errUsage
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "palisadectl %s: %v\n", args[0], err)
		return 2
	case errors.Is(err, agentapi.ErrAgentUnavailable):
		fmt.Fprintf(stderr, "palisadectl: no palisade-agent answers on %s.\n"+
			"Is the agent running on this node (kubectl -n palisade-system get pods -o wide), and are you root?\n"+
			"Use --socket or $PALISADE_SOCKET if it listens elsewhere.\n(%v)\n", c.socket, err)
		return 1
	}
	fmt.Fprintf(stderr, "palisadectl %s: %v\n", args[0], friendly(err))
	return 1
}

// friendly turns the agent's coded errors into their message alone.
func friendly(err error) error {
	var ae *agentapi.Error
	if errors.As(err, &ae) {
		return errors.New(ae.Message)
	}
	return err
}

// flags returns a flag set with the common flags; parse fills c.
func (c *cli) flags(name, synopsis string) (*flag.FlagSet, func([]string) ([]string, error)) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.errOut)
	def := os.Getenv("PALISADE_SOCKET")
	if def == "" {
		def = agentapi.DefaultSocket
	}
	socket := fs.String("socket", def, "the agent's unix socket")
	output := fs.String("o", "table", "output format: table or json")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: palisadectl %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	// parse accepts flags before and after positional arguments, and
	// returns the positional ones.
	parse := func(args []string) ([]string, error) {
		var pos []string
		for {
			if err := fs.Parse(args); err != nil {
				if errors.Is(err, flag.ErrHelp) {
					return nil, err
				}
				return nil, &errUsage{err.Error()}
			}
			if fs.NArg() == 0 {
				break
			}
			pos = append(pos, fs.Arg(0))
			args = fs.Args()[1:]
		}
		switch *output {
		case "table":
		case "json":
			c.json = true
		default:
			return nil, &errUsage{fmt.Sprintf("-o %q: use table or json", *output)}
		}
		c.socket = *socket
		c.client = agentapi.NewClient(c.socket)
		return pos, nil
	}
	return fs, parse
}
