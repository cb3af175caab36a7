package main

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// newLogger returns the invocation's logger and a function closing its file.
// It writes to conf.LogFile, or to stderr: stdout carries only the CNI result.
// Every record carries the container, netns, pod and a random invocation ID
// so that the lines of one call can be told apart in a shared file.
func newLogger(conf *Conf, args *skel.CmdArgs, pod string) (*slog.Logger, func()) {
	var w io.Writer = os.Stderr
	closeFn := func() {}
	var openErr error
	if conf.LogFile != "" {
		f, err := os.OpenFile(conf.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err == nil {
			w = f
			closeFn = func() { _ = f.Close() }
		} else {
			openErr = err
		}
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: conf.level})).With(
		"invocation", invocationID(),
		"containerID", args.ContainerID,
		"netns", args.Netns,
		"pod", pod,
	)
	if openErr != nil {
		log.Warn("Log file unusable, logging to stderr", "logFile", conf.LogFile, "error", openErr)
	}
	return log, closeFn
}

// podOf reads namespace/name from CNI_ARGS for logs, leniently: DEL, CHECK
// and GC do not need the pod and must not fail for want of it.
func podOf(cniArgs string) string {
	pa := &podArgs{}
	if err := types.LoadArgs(cniArgs, pa); err != nil || pa.K8S_POD_NAME == "" {
		return ""
	}
	return pa.pod()
}

func invocationID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}
