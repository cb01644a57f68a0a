package engine

import "unsafe"

// unsafePointer is the one unsafe conversion: a byte buffer seen as a
// struct cmsghdr, which is what the kernel ABI defines it to be.
func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }
