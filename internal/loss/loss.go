// Package loss runs a lease's AfterLost functions (backend.LossNotifier)
// the way context.AfterFunc runs functions after a context ends, making
// nothing until the first AfterLost: the one implementation the backends
// share.
package loss

import "context"

// Notifier holds the functions to run once a lease is lost. Its zero value
// is ready. It has no lock of its own: the lease's lock that guards the
// lease's state guards it too.
type Notifier struct {
	ctx  context.Context
	stop context.CancelFunc
}

// Context returns the context that AfterLost's functions wait on, made on
// first use and already done if the lease is (done). The lease's lock is
// held; call context.AfterFunc on it after unlocking.
func (n *Notifier) Context(done bool) context.Context {
	if n.ctx == nil {
		n.ctx, n.stop = context.WithCancel(context.Background())
		if done {
			n.stop()
		}
	}
	return n.ctx
}

// Fire starts the functions: the lease's Lost has just closed. The lease's
// lock is held.
func (n *Notifier) Fire() {
	if n.stop != nil {
		n.stop()
	}
}
