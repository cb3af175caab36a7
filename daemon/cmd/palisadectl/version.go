package main

import (
	"context"
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// versions is what `version` prints.
type versions struct {
	Client string `json:"client"`
	Go     string `json:"go"`
	// Agent is the local agent's version, empty when none answers.
	Agent      string `json:"agent,omitempty"`
	AgentError string `json:"agentError,omitempty"`
}

func (c *cli) versionCommand() *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "palisadectl's version, and the local agent's when one answers",
		Args:  noArgs("version takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := versions{Client: version, Go: runtime.Version()}
			if !clientOnly {
				v.Agent, v.AgentError = c.agentVersion(cmd.Context())
			}
			return c.render(v, func(bool) error {
				fmt.Fprintf(c.out, "Client: %s (%s)\n", v.Client, v.Go)
				switch {
				case v.Agent != "":
					fmt.Fprintf(c.out, "Agent:  %s (%s)\n", v.Agent, c.socket)
				case !clientOnly:
					fmt.Fprintf(c.out, "Agent:  none answers on %s\n", c.socket)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "only palisadectl's own version: do not ask the agent")
	return cmd
}

// agentVersion asks the local agent; a missing agent is no error here.
func (c *cli) agentVersion(ctx context.Context) (string, string) {
	st, err := c.client.Status(ctx)
	if err != nil {
		return "", err.Error()
	}
	return st.Version, ""
}
