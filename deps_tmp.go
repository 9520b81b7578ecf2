package dlock

import (
	_ "github.com/cenkalti/backoff/v4"
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/valkey-io/valkey-go"
	_ "go.uber.org/goleak"
	_ "golang.org/x/sys/unix"
)
