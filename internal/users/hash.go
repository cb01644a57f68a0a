package users

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/crypto/argon2"
)

// params are the argon2id parameters for new hashes.
type params struct {
	memory  uint32 // KiB
	time    uint32
	threads uint8
	saltLen int
	keyLen  int
}

// defaultParams are used for new hashes: OWASP's argon2id recommendation
// (19 MiB, 2 passes, 1 lane), ~20 ms each. Verification always uses the
// parameters stored in the entry, so changing these (tests lower them)
// leaves existing hashes valid.
var defaultParams = params{memory: 19456, time: 2, threads: 1, saltLen: 16, keyLen: 32}

// Bounds on the parameters a users file may carry. They keep a damaged or
// hostile file from making each verification take gigabytes or minutes.
const (
	minSaltLen = 8 // the PHC string format's minimum
	maxSaltLen = 64
	minKeyLen  = 16
	maxKeyLen  = 64
	maxMemory  = 1 << 20 // KiB, 1 GiB
	maxTime    = 64
)

// hash is a decoded argon2id PHC string, version 19.
type hash struct {
	memory  uint32 // KiB
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

// kdfSem bounds the argon2 runs in the process: each takes the memory
// parameter in RAM (19 MiB by default) and a CPU for its duration.
var kdfSem = make(chan struct{}, runtime.NumCPU())

// kdfStats counts argon2 runs, for tests.
var kdfStats struct {
	runs        atomic.Int64
	inFlight    atomic.Int64
	maxInFlight atomic.Int64
}

// derive runs argon2id on password with h's parameters and salt, waiting
// for a slot in kdfSem first.
func (h *hash) derive(password string) []byte {
	kdfSem <- struct{}{}
	defer func() { <-kdfSem }()
	kdfStats.runs.Add(1)
	n := kdfStats.inFlight.Add(1)
	defer kdfStats.inFlight.Add(-1)
	for {
		m := kdfStats.maxInFlight.Load()
		if n <= m || kdfStats.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	return argon2.IDKey([]byte(password), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
}

// verify reports whether password matches h, comparing in constant time.
func (h *hash) verify(password string) bool {
	return subtle.ConstantTimeCompare(h.derive(password), h.key) == 1
}

// newHash hashes password with p and a fresh random salt.
func newHash(password string, p params) hash {
	h := hash{memory: p.memory, time: p.time, threads: p.threads, salt: make([]byte, p.saltLen), key: make([]byte, p.keyLen)}
	rand.Read(h.salt)
	h.key = h.derive(password)
	return h
}

// dummyHash has the default parameters and a random salt and key: no
// password matches it (but for a 2^-256 chance), and verifying against it
// costs what verifying a real default hash costs.
func dummyHash() hash {
	p := defaultParams
	h := hash{memory: p.memory, time: p.time, threads: p.threads, salt: make([]byte, p.saltLen), key: make([]byte, p.keyLen)}
	rand.Read(h.salt)
	rand.Read(h.key)
	return h
}

var b64 = base64.RawStdEncoding.Strict()

// appendPHC appends h as a PHC string:
// $argon2id$v=19$m=M,t=T,p=P$SALT$KEY.
func (h *hash) appendPHC(b []byte) []byte {
	b = append(b, "$argon2id$v=19$m="...)
	b = strconv.AppendUint(b, uint64(h.memory), 10)
	b = append(b, ",t="...)
	b = strconv.AppendUint(b, uint64(h.time), 10)
	b = append(b, ",p="...)
	b = strconv.AppendUint(b, uint64(h.threads), 10)
	b = append(b, '$')
	b = b64.AppendEncode(b, h.salt)
	b = append(b, '$')
	b = b64.AppendEncode(b, h.key)
	return b
}

// parseHash parses an argon2id PHC string in the canonical form appendPHC
// writes. Its errors say what is wrong, for the corruption report.
func parseHash(s string) (hash, error) {
	var h hash
	f := strings.Split(s, "$")
	if len(f) != 6 || f[0] != "" {
		return h, errors.New("want $argon2id$v=19$m=M,t=T,p=P$SALT$KEY")
	}
	if f[1] != "argon2id" {
		return h, fmt.Errorf("algorithm %q, want argon2id", f[1])
	}
	if f[2] != "v=19" {
		return h, fmt.Errorf("version %q, want v=19", f[2])
	}
	p := strings.Split(f[3], ",")
	if len(p) != 3 {
		return h, fmt.Errorf("parameters %q, want m=M,t=T,p=P", f[3])
	}
	m, err := parseParam(p[0], "m", 1, maxMemory)
	if err != nil {
		return h, err
	}
	t, err := parseParam(p[1], "t", 1, maxTime)
	if err != nil {
		return h, err
	}
	par, err := parseParam(p[2], "p", 1, 255)
	if err != nil {
		return h, err
	}
	if m < 8*par {
		return h, fmt.Errorf("m=%d is less than 8*p=%d", m, 8*par)
	}
	h.memory, h.time, h.threads = m, t, uint8(par)
	if h.salt, err = decodeB64(f[4], "salt", minSaltLen, maxSaltLen); err != nil {
		return h, err
	}
	if h.key, err = decodeB64(f[5], "key", minKeyLen, maxKeyLen); err != nil {
		return h, err
	}
	return h, nil
}

// parseParam parses "name=N" with N a canonical decimal (no sign, no
// leading zeros) in [lo, hi].
func parseParam(s, name string, lo, hi uint32) (uint32, error) {
	v, ok := strings.CutPrefix(s, name+"=")
	if !ok {
		return 0, fmt.Errorf("parameter %q, want %s=N", s, name)
	}
	canonical := v != "" && len(v) <= 10 && (v[0] != '0' || v == "0")
	for i := 0; canonical && i < len(v); i++ {
		canonical = '0' <= v[i] && v[i] <= '9'
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if !canonical || err != nil {
		return 0, fmt.Errorf("parameter %q: not a decimal number", s)
	}
	if uint32(n) < lo || uint32(n) > hi {
		return 0, fmt.Errorf("parameter %q out of range [%d, %d]", s, lo, hi)
	}
	return uint32(n), nil
}

// decodeB64 decodes unpadded standard base64 (the PHC string format's
// "B64"), refusing what would not re-encode to the same text.
func decodeB64(s, what string, minLen, maxLen int) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/') {
			return nil, fmt.Errorf("%s: invalid base64 character %q", what, c)
		}
	}
	b, err := b64.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid base64", what)
	}
	if len(b) < minLen || len(b) > maxLen {
		return nil, fmt.Errorf("%s is %d bytes, want %d to %d", what, len(b), minLen, maxLen)
	}
	return b, nil
}
