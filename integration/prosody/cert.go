package prosody

import (
	"crypto/x509"

	"github.com/xmpptrack/xmpptrack/integration/internal/serverkit"
)

// writeCertificates makes a fresh CA and a server certificate signed by it
// for the server's hosts, and writes them into l's directory.
// It returns the CA certificate.
func writeCertificates(l layout) (*x509.Certificate, error) {
	return serverkit.WriteCertificates(serverkit.CertFiles{
		// The CA stays out of the folder Prosody indexes for certificates.
		CA:   l.path(caCertFile),
		Cert: l.path(certDir, certFile),
		Key:  l.path(certDir, keyFile),
	}, domain, mucDomain)
}
