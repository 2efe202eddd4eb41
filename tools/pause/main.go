// Command pause is the sandbox process of every pod on the local real nodes: it holds the
// pod's namespaces, reaps orphaned children (it is PID 1 when the pod shares its PID
// namespace) and exits on SIGINT or SIGTERM. It does what registry.k8s.io/pause does, built
// here because that registry is out of reach.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
