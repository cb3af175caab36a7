package testbed

// TB is what the testbed's helpers need from their caller: a test's
// *testing.T, or Runner when the testbed runs outside `go test` (the
// long-lived testbed behind scripts/testbed). testing.TB itself cannot be
// implemented outside the testing package, hence this subset.
type TB interface {
	Helper()
	// Cleanup registers fn to run when the caller is done, last
	// registered first.
	Cleanup(fn func())
	Error(args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Failed() bool
	Logf(format string, args ...any)
	Name() string
	TempDir() string
}
