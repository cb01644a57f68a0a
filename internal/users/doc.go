// Package users is tungate's user store: the names, roles and password
// hashes of the people allowed to use the SOCKS5 server (RFC 1929
// username/password authentication) and of the admins allowed to manage it.
//
// A Store is backed by one text file, loaded at start (Open, OpenOrCreate)
// and rewritten in full on every change. The file holds one user per line:
//
//	# tungate users v1
//	alice:admin:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<key>
//	bob:user:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<key>
//
// The hash is an argon2id PHC string (salt and key in unpadded standard
// base64). The parameters are stored per entry, so the defaults can change
// without invalidating existing passwords. Blank lines and lines starting
// with '#' are ignored; the file is rewritten without them. A missing file
// or one that does not parse is an error naming the path (and the line),
// never an empty store.
//
// Writes are atomic and durable: the new contents go to a temporary file in
// the same directory (mode 0600), which is synced, renamed over the old one,
// and the directory is synced. A mutating method returns only after that,
// and if any step fails the in-memory state is left as it was.
//
// Authenticate runs in constant time with respect to whether the name
// exists: an unknown name costs one KDF run against a dummy hash. At most
// runtime.NumCPU() KDF runs happen at once in the process, which bounds the
// memory an authentication flood can take. After a successful
// verification, an HMAC-SHA256 of the name and password under a random
// per-process key is kept in memory, so that a client reconnecting with
// the same credentials costs a hash instead of a KDF run; it is dropped
// when the password changes or the user is deleted. No clear password is
// ever kept.
//
// A Store is safe for concurrent use. It never logs.
//
// What it is not: there is no LDAP, PAM or other external directory, no
// per-user ACLs, quotas or expiry, no lockout or rate limiting (the callers'
// job), and no locking between processes: the daemon reads the file once,
// so changes made with `tungate user` while it runs are not seen, and are
// lost at the daemon's own next change; use the admin server then.
package users
