//go:build !unix

package users

import "os"

// syncDir does nothing: directories cannot be synced here.
func syncDir(string) error { return nil }

// keepOwner does nothing: files have no Unix owner here.
func keepOwner(*os.File, string) {}
