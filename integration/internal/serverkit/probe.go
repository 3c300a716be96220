package serverkit

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"time"
)

// ProbeStartTLS opens a client stream to domain on addr and reports whether
// the server answers with stream features that offer STARTTLS: then the
// host is up, with its certificate.
func ProbeStartTLS(ctx context.Context, addr, domain string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	_, err = fmt.Fprintf(c, "<?xml version='1.0'?><stream:stream to=%q version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", domain)
	if err != nil {
		return err
	}
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte("</stream:features>")) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return fmt.Errorf("probing %s: %w (read %q)", addr, err, got)
		}
	}
	if !bytes.Contains(got, []byte("<starttls")) {
		return fmt.Errorf("probing %s: no STARTTLS in %q", addr, got)
	}
	fmt.Fprint(c, "</stream:stream>")
	return nil
}
