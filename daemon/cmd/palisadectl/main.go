// Command palisadectl shows what Palisade's policy does: on this node, the
// agent's status, its pods and their compiled rules, live flow verdicts,
// and why a flow is allowed or dropped, read from the local agent's unix
// socket (run it as root on the node, or kubectl exec into the agent's
// pod); across the cluster, every agent's status and both sides of a flow,
// read from the API server with a kubeconfig (--all-nodes). Installed as
// kubectl-palisade, it is also `kubectl palisade`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// Exit codes: scripts and probes tell "the agent is not ready" from "the
// command failed" and from "the command line is wrong".
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitNotReady = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cli carries the common flags and the output streams.
type cli struct {
	socket string
	output string
	// kube picks the API server for --all-nodes.
	kube kubeFlags
	// newKube, when set, replaces the kubeconfig's client (tests).
	newKube func() (kubernetes.Interface, error)
	out     io.Writer
	// errOut gets errors and hints, never data.
	errOut io.Writer
	client *agentapi.Client
}

// errUsage marks an error the user fixes by changing the command line.
type errUsage struct{ msg string }

func (e *errUsage) Error() string { return e.msg }

// errNotReady is returned, after the status was printed, when an agent is
// not ready.
type errNotReady struct{ msg string }

func (e *errNotReady) Error() string { return e.msg }

// name is how the user called us: kubectl runs its plugins as
// kubectl-palisade, and the help then reads "kubectl palisade".
func name() string {
	if strings.HasPrefix(filepath.Base(os.Args[0]), "kubectl-") {
		return "kubectl palisade"
	}
	return "palisadectl"
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return (&cli{out: stdout, errOut: stderr}).run(ctx, args)
}

func (c *cli) run(ctx context.Context, args []string) int {
	root := c.rootCommand()
	root.SetArgs(args)
	root.SetOut(c.out)
	root.SetErr(c.errOut)
	cmd, err := root.ExecuteContextC(ctx)
	return c.exit(cmd, err)
}

// exit reports err and chooses the exit code.
func (c *cli) exit(cmd *cobra.Command, err error) int {
	var ue *errUsage
	var nr *errNotReady
	path := name()
	if cmd != nil {
		path = strings.Replace(cmd.CommandPath(), "palisadectl", name(), 1)
	}
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &nr):
		fmt.Fprintf(c.errOut, "%s: %v\n", path, err)
		return exitNotReady
	case errors.As(err, &ue), isCobraUsage(err):
		fmt.Fprintf(c.errOut, "%s: %v\nRun '%s --help' for usage.\n", path, err, path)
		return exitUsage
	case errors.Is(err, agentapi.ErrAgentUnavailable):
		fmt.Fprintf(c.errOut, "%s: no palisade-agent answers on %s.\n"+
			"Is the agent running on this node (kubectl -n palisade-system get pods -o wide), and are you root?\n"+
			"Use --socket or $PALISADE_SOCKET if it listens elsewhere, or --all-nodes to read every node's status from the API server.\n(%v)\n",
			path, c.socket, err)
		return exitError
	}
	fmt.Fprintf(c.errOut, "%s: %v\n", path, friendly(err))
	return exitError
}

// isCobraUsage recognizes the command-line errors cobra makes itself.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "required flag"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// friendly turns the agent's coded errors into their message alone.
func friendly(err error) error {
	var ae *agentapi.Error
	if errors.As(err, &ae) {
		return errors.New(ae.Message)
	}
	return err
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// outputs are the -o values, in the order help and completion list them.
var outputs = []string{"table", "wide", "json", "yaml"}

func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "palisadectl",
		Short: "Show what Palisade's network policy does",
		Long: `palisadectl shows what Palisade's network policy does.

On a node it talks to the local agent's socket (as root, or through
kubectl exec into the agent's pod). With --all-nodes, status and explain
read every agent's published status and the cluster's objects from the
API server instead, with a kubeconfig ($KUBECONFIG, ~/.kube/config or
--kubeconfig); installed as kubectl-palisade, this is 'kubectl palisade'.

Exit codes: 0 success, 1 error, 2 wrong command line, 3 an agent is not ready.`,
		Example: `  palisadectl status
  palisadectl endpoints -o wide
  palisadectl explain --from prod/frontend --to prod/backend:6379/TCP
  palisadectl flows --verdict dropped --follow
  kubectl palisade status --all-nodes
  kubectl palisade explain --all-nodes --from prod/frontend --to prod/backend:6379`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// No command: show the help, as a usage error.
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return &errUsage{fmt.Sprintf("unknown command %q", args[0])}
			}
			_ = cmd.Help()
			return &errUsage{"name a command"}
		},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch c.output {
			case "table", "wide", "json", "yaml":
			default:
				return &errUsage{fmt.Sprintf("-o %q: use %s", c.output, strings.Join(outputs, ", "))}
			}
			c.client = agentapi.NewClient(c.socket)
			return nil
		},
	}
	root.Args = cobra.ArbitraryArgs
	pf := root.PersistentFlags()
	pf.StringVar(&c.socket, "socket", envOr("PALISADE_SOCKET", agentapi.DefaultSocket), "the local agent's unix socket ($PALISADE_SOCKET)")
	pf.StringVarP(&c.output, "output", "o", "table", "output format: "+strings.Join(outputs, ", "))
	c.kube.register(pf)
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputs, cobra.ShellCompDirectiveNoFileComp))
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &errUsage{err.Error()} })
	root.AddCommand(c.statusCommand(), c.endpointsCommand(), c.policyCommand(), c.explainCommand(), c.flowsCommand(), c.versionCommand())
	return root
}

// noArgs rejects positional arguments with a message that says what to do.
func noArgs(hint string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return &errUsage{fmt.Sprintf("unexpected %q: %s", args[0], hint)}
		}
		return nil
	}
}
