package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"tungate/admin"
)

// printer writes tables, or JSON.
type printer struct {
	w    io.Writer
	json bool
}

func (p *printer) emit(v any) error {
	enc := json.NewEncoder(p.w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (p *printer) table() *tabwriter.Writer {
	return tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
}

// jsonMetrics is METRICS for scripts.
type jsonMetrics struct {
	Historic       uint64 `json:"historic"`
	Concurrent     uint64 `json:"concurrent"`
	BytesTotal     uint64 `json:"bytes_total"`
	BytesUp        uint64 `json:"bytes_up"`
	BytesDown      uint64 `json:"bytes_down"`
	PeakConcurrent uint64 `json:"peak_concurrent"`
	UptimeSeconds  uint64 `json:"uptime_seconds"`
	FailedLogins   uint64 `json:"failed_logins"`
	TCPOpen        uint64 `json:"tcp_open"`
	UDPOpen        uint64 `json:"udp_open"`
	DialFailures   uint64 `json:"dial_failures"`
}

func runMetrics(_ context.Context, s *session) error {
	m, err := s.cl.Metrics()
	if err != nil {
		return describeStatus(err, "metrics")
	}
	if s.out.json {
		return s.out.emit(jsonMetrics(m))
	}
	tw := s.out.table()
	for _, row := range []struct {
		name  string
		value string
	}{
		{"historic connections", count(m.Historic)},
		{"concurrent connections", count(m.Concurrent)},
		{"peak concurrent", count(m.PeakConcurrent)},
		{"TCP flows open", count(m.TCPOpen)},
		{"UDP flows open", count(m.UDPOpen)},
		{"bytes transferred", bytesWithRaw(m.BytesTotal)},
		{"bytes up", bytesWithRaw(m.BytesUp)},
		{"bytes down", bytesWithRaw(m.BytesDown)},
		{"failed logins", count(m.FailedLogins)},
		{"upstream dial failures", count(m.DialFailures)},
		{"uptime", (time.Duration(m.UptimeSeconds) * time.Second).String()},
	} {
		fmt.Fprintf(tw, "%s\t%s\n", row.name, row.value)
	}
	return tw.Flush()
}

func count(v uint64) string { return strconv.FormatUint(v, 10) }

func bytesWithRaw(v uint64) string {
	if v < 1024 {
		return strconv.FormatUint(v, 10)
	}
	return fmt.Sprintf("%d (%s)", v, humanBytes(float64(v)))
}

// humanBytes renders n bytes with a binary unit.
func humanBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}

// jsonFlow is a FLOW for scripts.
type jsonFlow struct {
	ID        uint64   `json:"id"`
	Proto     string   `json:"proto"`
	State     string   `json:"state"`
	Flags     []string `json:"flags"`
	Src       string   `json:"src"`
	Dst       string   `json:"dst"`
	User      string   `json:"user"`
	BytesUp   uint64   `json:"bytes_up"`
	BytesDown uint64   `json:"bytes_down"`
	PktsUp    uint64   `json:"pkts_up"`
	PktsDown  uint64   `json:"pkts_down"`
	AgeMS     uint64   `json:"age_ms"`
	IdleMS    uint64   `json:"idle_ms"`
	// Rates, in top only.
	RateUp   *float64 `json:"rate_up,omitempty"`
	RateDown *float64 `json:"rate_down,omitempty"`
}

func toJSONFlow(f admin.Flow) jsonFlow {
	flags := []string{}
	if f.Flags != 0 {
		flags = strings.Split(f.Flags.String(), "|")
	}
	return jsonFlow{
		ID: f.ID, Proto: f.Proto.String(), State: f.State.String(), Flags: flags,
		Src: f.Src.String(), Dst: f.Dst.String(), User: f.User,
		BytesUp: f.BytesUp, BytesDown: f.BytesDown, PktsUp: f.PktsUp, PktsDown: f.PktsDown,
		AgeMS: f.AgeMS, IdleMS: f.IdleMS,
	}
}

func runFlows(_ context.Context, s *session) error {
	flows, err := s.cl.Flows()
	if err != nil {
		return describeStatus(err, "flows")
	}
	if s.out.json {
		out := make([]jsonFlow, len(flows))
		for i, f := range flows {
			out[i] = toJSONFlow(f)
		}
		return s.out.emit(out)
	}
	tw := s.out.table()
	fmt.Fprintln(tw, "ID\tPROTO\tSTATE\tFLAGS\tSOURCE\tDESTINATION\tUSER\tUP\tDOWN\tAGE\tIDLE")
	for _, f := range flows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			f.ID, f.Proto, f.State, f.Flags, f.Src, f.Dst, orDash(f.User),
			humanBytes(float64(f.BytesUp)), humanBytes(float64(f.BytesDown)),
			ms(f.AgeMS), ms(f.IdleMS))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(s.out.w, "%d flows\n", len(flows))
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ms renders milliseconds as a short duration.
func ms(v uint64) string {
	d := time.Duration(min(v, uint64(1<<63-1)/uint64(time.Millisecond))) * time.Millisecond
	switch {
	case d < time.Second:
		return d.String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func runUsers(_ context.Context, s *session) error {
	list, err := s.cl.Users()
	if err != nil {
		return describeStatus(err, "users")
	}
	if s.out.json {
		type jsonUser struct {
			Name  string `json:"name"`
			Role  string `json:"role"`
			Flows uint32 `json:"flows"`
		}
		out := make([]jsonUser, len(list))
		for i, u := range list {
			out[i] = jsonUser{u.Name, u.Role.String(), u.Flows}
		}
		return s.out.emit(out)
	}
	tw := s.out.table()
	fmt.Fprintln(tw, "NAME\tROLE\tFLOWS")
	for _, u := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", u.Name, u.Role, u.Flows)
	}
	return tw.Flush()
}

// done reports a change: a line for people, an object for scripts.
func (s *session) done(msg string, fields map[string]any) error {
	if s.out.json {
		fields["ok"] = true
		return s.out.emit(fields)
	}
	_, err := fmt.Fprintln(s.out.w, msg)
	return err
}

func runUserAdd(s *session, name string, role admin.Role) error {
	err := s.cl.AddUser(admin.NewUser{Name: name, Password: s.newPassword, Role: role})
	if err != nil {
		return describeStatus(err, "user add "+name)
	}
	return s.done(fmt.Sprintf("added %s %q", role, name), map[string]any{"user": name, "role": role.String()})
}

func runUserDel(s *session, name string) error {
	if err := s.cl.DeleteUser(name); err != nil {
		return describeStatus(err, "user del "+name)
	}
	return s.done(fmt.Sprintf("deleted user %q", name), map[string]any{"user": name})
}

func runUserPasswd(s *session, name string) error {
	if err := s.cl.SetPassword(name, s.newPassword); err != nil {
		return describeStatus(err, "user passwd "+name)
	}
	return s.done(fmt.Sprintf("changed the password of %q", name), map[string]any{"user": name})
}

func runFlowClose(s *session, id uint64) error {
	if err := s.cl.CloseFlow(id); err != nil {
		return describeStatus(err, "flow close "+strconv.FormatUint(id, 10))
	}
	return s.done(fmt.Sprintf("closed flow %d", id), map[string]any{"flow": id})
}

func runPing(_ context.Context, s *session) error {
	start := time.Now()
	payload := []byte("tungatectl " + start.Format(time.RFC3339Nano))
	if err := s.cl.Ping(payload); err != nil {
		return describeStatus(err, "ping")
	}
	rtt := time.Since(start)
	if s.out.json {
		return s.out.emit(map[string]any{"ok": true, "addr": s.addr.String(), "rtt_ms": float64(rtt.Microseconds()) / 1000})
	}
	_, err := fmt.Fprintf(s.out.w, "pong from %s in %v\n", s.addr, rtt.Round(time.Microsecond))
	return err
}

// formatValue renders a config value for people.
func formatValue(v admin.ConfigValue) string {
	n := v.Uint()
	switch {
	case v.Key == admin.KeyAuthRequired:
		return strconv.FormatBool(n == 1)
	case v.Key == admin.KeyLogLevel:
		if n < uint64(len(logLevelNames)) {
			return logLevelNames[n]
		}
	case v.Key.Millis():
		if n == 0 && v.Key == admin.KeyTCPIdleTimeout {
			return "0 (never)"
		}
		return (time.Duration(n) * time.Millisecond).String()
	case v.Key == admin.KeyMaxFlows && n == 0:
		return "0 (no limit)"
	case v.Key == admin.KeyRelayBuffer:
		return fmt.Sprintf("%d (%s)", n, humanBytes(float64(n)))
	}
	return strconv.FormatUint(n, 10)
}

func runConfigGet(s *session, keys []admin.Key) error {
	if len(keys) == 0 {
		caps, err := s.cl.Capabilities()
		if err != nil {
			return describeStatus(err, "config get")
		}
		keys = caps.Keys
	}
	values := make([]admin.ConfigValue, 0, len(keys))
	for _, k := range keys {
		v, err := s.cl.Config(k)
		if err != nil {
			return describeStatus(err, "config get "+k.String())
		}
		values = append(values, v)
	}
	if s.out.json {
		out := map[string]uint64{}
		for _, v := range values {
			out[v.Key.String()] = v.Uint()
		}
		return s.out.emit(out)
	}
	tw := s.out.table()
	for _, v := range values {
		fmt.Fprintf(tw, "%s\t%s\n", v.Key, formatValue(v))
	}
	return tw.Flush()
}

func runConfigSet(s *session, v admin.ConfigValue) error {
	applied, err := s.cl.SetConfig(v)
	if err != nil {
		return describeStatus(err, fmt.Sprintf("config set %s %s", v.Key, formatValue(v)))
	}
	return s.done(fmt.Sprintf("%s = %s", applied.Key, formatValue(applied)),
		map[string]any{"key": applied.Key.String(), "value": applied.Uint()})
}
