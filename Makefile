# Palisade. `make demo` and `make test` are the two commands a new machine
# needs; each installs what is missing first (scripts/deps).

GO       ?= go
VERSION  ?= $(shell scripts/version)
LDFLAGS  := -s -w -X main.version=$(VERSION)
# One pinned Debian clang for the BPF objects, so that `make generate`
# reproduces the committed ones byte for byte.
CLANG    ?= clang-19
STRIP    ?= llvm-strip-19
ARCH_INC := /usr/include/$(shell uname -m)-linux-gnu

.PHONY: all build generate test test-unit demo deps kube flannel clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/palisade ./plugin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/palisade-agent ./daemon/cmd/palisade-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/palisadectl ./daemon/cmd/palisadectl

generate:
	cd bpf && BPF2GO_CC=$(CLANG) BPF2GO_STRIP=$(STRIP) \
		BPF2GO_CFLAGS="-O2 -g -Wall -Werror -I$(ARCH_INC)" $(GO) generate ./...

deps:
	scripts/deps

kube: deps
	scripts/kube-build >/dev/null

# The testbed's pod network: Flannel's CNI plugin and flanneld, built from
# the module proxy into a cache (scripts/flannel-build).
flannel: deps
	scripts/flannel-build >/dev/null

# Everything: pure, privileged kernel, integration and end-to-end tests.
# Privileged tests fail instead of skipping (PALISADE_REQUIRE_PRIVILEGED).
test: kube flannel helm
	PALISADE_REQUIRE_PRIVILEGED=1 $(GO) test -count=1 -timeout 30m ./...

# NetworkPolicy conformance: the upstream e2e suite's catalog and ours,
# replayed on a two-node testbed, with the report (README "Conformance").
# `make test` runs the same cases as TestPrivilegedConformance.
# VIA=nodeport (or pod) probes through NodePorts (pod IPs) instead of
# ClusterIPs; FAMILY=6 (or dual) replays them on IPv6 (both families).
.PHONY: conformance
conformance: kube flannel
	scripts/conformance $(if $(VIA),--via $(VIA)) $(if $(FAMILY),--family $(FAMILY))

# The performance benchmark on the testbed against a no-Palisade baseline
# (README "Performance"); minutes long, so not part of `make test`.
# ARGS passes flags through, e.g. ARGS='-rounds=3 -rules=0,1000'.
.PHONY: bench
bench: kube flannel
	scripts/bench $(ARGS)

# Each fuzz target mutated for FUZZTIME (a Go duration), one after
# another: `go test -fuzz` takes one target per run. Plain `go test`
# (and so `make test`) replays their seeds and testdata/fuzz corpora.
# New failing inputs land in the package's testdata/fuzz/<target>/.
FUZZTIME ?= 2m
FUZZ_TARGETS := $(shell grep -l '^func Fuzz' $$(find . -name '*_test.go' -not -path './tests/kube/*' -not -path './tests/peers/*') | xargs -n1 dirname | sort -u)
.PHONY: fuzz
fuzz:
	@for pkg in $(FUZZ_TARGETS); do \
		for target in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$pkg/*_test.go | sed 's/^func //'); do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			PALISADE_REQUIRE_PRIVILEGED=$${PALISADE_REQUIRE_PRIVILEGED-1} \
				$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# The chaos soak on the testbed (README "Reliability"), DURATION long (a Go
# duration); `make test` skips it, since even a short one costs a testbed.
DURATION ?= 5m
.PHONY: soak
soak: kube flannel
	scripts/soak $(DURATION)

# The tests that need neither root nor a control plane.
test-unit:
	$(GO) test -count=1 ./bpf/... ./daemon/... ./plugin/...

# Palisade's OCI image, agent + plugin (+ palisadectl), as a tarball for
# `ctr -n k8s.io images import`; no container engine needed.
.PHONY: image
image: build
	LDFLAGS='$(LDFLAGS)' scripts/image

# Helm, pinned in tests/helm/go.mod, built into a cache (scripts/helm-build
# prints its path): it renders charts/palisade for the tests.
.PHONY: helm
helm:
	scripts/helm-build

# A release into bin/release: amd64 and arm64 binaries, one multi-arch OCI
# image (layout tarball, no container engine), the packaged chart and the
# manifests naming the image; versions from `git describe` (scripts/version).
# IMAGE_REPO names the image.
.PHONY: release
release: helm
	scripts/release

# KEEP=1 leaves the demo's testbed up until ^C, for kubectl.
demo: kube flannel build
	scripts/demo $(if $(KEEP),--keep)

clean:
	rm -rf bin
