package admin

import "errors"

// ErrNoSCTP means that the kernel has no SCTP: on Linux, the sctp module
// is not loaded (or not built). Errors wrapping it come from ListenSCTP
// and DialSCTP.
var ErrNoSCTP = errors.New("admin: the kernel has no SCTP support (load the sctp kernel module: modprobe sctp)")
