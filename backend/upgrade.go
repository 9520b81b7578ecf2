package backend

import "context"

// UpgradeableLocker is implemented by an RWLocker that also offers the
// upgradeable read lock: a third kind of holder of a reader-writer lock,
// which shares the name with plain readers but excludes writers and other
// upgradeable readers, and whose lease (an Upgrader) can turn into the
// write lock without ever letting go of its read access.
type UpgradeableLocker[L Lease] interface {
	// TryULock makes one attempt to take name as its upgradeable reader. It
	// fails (ok == false) while a writer holds or waits for name, or
	// another upgradeable reader holds it. Its lease implements Upgrader.
	TryULock(ctx context.Context, name string) (lease L, ok bool, err error)
}

// UpgradeableWaiter is implemented by an UpgradeableLocker that can wait
// natively for the upgradeable read lock.
type UpgradeableWaiter[L Lease] interface {
	// ULock waits until it takes name as its upgradeable reader or ctx is
	// done.
	ULock(ctx context.Context, name string) (L, error)
}

// Upgrader is implemented by the leases of an UpgradeableLocker.
type Upgrader interface {
	// Upgrade waits until the plain readers of the lease's name have left
	// and makes the lease its writer; while it waits, new readers and
	// writers of the name wait too (writer preference), so a stream of
	// readers cannot starve it. It returns an error wrapping ErrLockLost if
	// the lease is lost meanwhile. When ctx ends first it returns an error
	// wrapping ctx.Err(), and the lease still holds the upgradeable read
	// lock, as it does after any other error. After Upgrade returns nil the
	// lease holds the write lock (calling Upgrade again returns nil at
	// once) until Release, which lets go of everything.
	Upgrade(ctx context.Context) error
	// TryUpgrade makes one attempt: ok == false while plain readers hold
	// the name; the lease then still holds the upgradeable read lock.
	TryUpgrade(ctx context.Context) (ok bool, err error)
}
