//go:build !unix

package gateway

import (
	"errors"
	"net"
	"syscall"
)

// rawConnOf: without unix read(2), leanConn reads the connection plainly.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

func sysRead(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
