package serverkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// certValidity is how long the generated certificates are valid. A server
// lives for one test run or one development session; a year is plenty.
const certValidity = 365 * 24 * time.Hour

// CertFiles are the paths WriteCertificates writes, as PEM: the CA
// certificate, the server certificate and the server's private key.
type CertFiles struct {
	CA, Cert, Key string
}

// WriteCertificates makes a fresh CA and a server certificate signed by it
// for hosts (the first is the certificate's common name) and 127.0.0.1, and
// writes them to files. It returns the CA certificate, for clients to trust.
func WriteCertificates(files CertFiles, hosts ...string) (*x509.Certificate, error) {
	if len(hosts) == 0 {
		return nil, errors.New("serverkit: a certificate needs at least one host")
	}
	now := time.Now()

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("serverkit: generating CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"xmpptrack"}, CommonName: "xmpptrack test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("serverkit: creating CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("serverkit: parsing CA certificate: %w", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("serverkit: generating server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"xmpptrack"}, CommonName: hosts[0]},
		DNSNames:     hosts,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("serverkit: creating server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("serverkit: encoding server key: %w", err)
	}

	for _, f := range []struct {
		path  string
		block *pem.Block
		perm  os.FileMode
	}{
		{files.CA, &pem.Block{Type: "CERTIFICATE", Bytes: caDER}, 0o644},
		{files.Cert, &pem.Block{Type: "CERTIFICATE", Bytes: der}, 0o644},
		{files.Key, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}, 0o600},
	} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(f.block), f.perm); err != nil {
			return nil, fmt.Errorf("serverkit: writing certificate files: %w", err)
		}
	}
	return ca, nil
}

// serial returns a random certificate serial number.
func serial() *big.Int {
	// rand.Int only fails if the reader fails, and crypto/rand never does.
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
