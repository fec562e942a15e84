// Command lego-driver drives lego's ACME client (github.com/go-acme/lego/v5, unmodified) with the lego v5 CLI's flag
// names and the three things certrail's ACME test needs: run (register with External Account Binding and obtain),
// renew (the CLI's `run --renew-force`) and revoke (the CLI's `certificates revoke`), answering http-01 (--http) and/or
// tls-alpn-01 (--tls) with lego's own challenge servers.
//
// Why not the lego CLI itself: lego v5.6.0's CLI package imports a logging module (gitlab.com/greyxor/slogor) that
// the Go module proxy reachable here does not serve, so `go install github.com/go-acme/lego/v5@v5.6.0` cannot build
// (see scripts/lego.sh). Everything ACME (JWS, EAB, orders, challenges, finalize, download, renew, revoke) is lego's
// library code; this file only parses flags and reads and writes the files.
//
//	lego-driver --server URL --email E --accept-tos --eab --eab.kid KID --eab.hmac KEY --domains NAME \
//	    --http --http.address 127.0.0.1:PORT --path DIR run
//	lego-driver ... --tls --tls.address 127.0.0.1:PORT ... run   (tls-alpn-01 instead of http-01)
//	lego-driver ... renew   (always renews: a new order and a new certificate, as `lego run --renew-force`)
//	lego-driver ... revoke
//
// Files under --path: accounts/account.key, certificates/NAME.crt (leaf and chain),
// NAME.issuer.crt and NAME.key (a new P-256 key for each certificate, the lego CLI's default --key-type ec256).
package main

import (
	"context"
	"crypto"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-acme/lego/v5/acme"
	"github.com/go-acme/lego/v5/certcrypto"
	"github.com/go-acme/lego/v5/certificate"
	"github.com/go-acme/lego/v5/challenge/http01"
	"github.com/go-acme/lego/v5/challenge/tlsalpn01"
	"github.com/go-acme/lego/v5/lego"
	"github.com/go-acme/lego/v5/registration"
)

type user struct {
	email string
	key   crypto.Signer
	reg   *acme.ExtendedAccount
}

func (u *user) GetEmail() string                       { return u.email }
func (u *user) GetRegistration() *acme.ExtendedAccount { return u.reg }
func (u *user) GetPrivateKey() crypto.Signer           { return u.key }

type options struct {
	server, email, kid, hmac, domain, httpAddress, tlsAddress, path string
	eab, acceptTOS, http, tls                                       bool
}

func main() {
	var o options
	flag.StringVar(&o.server, "server", "", "the ACME directory URL")
	flag.StringVar(&o.email, "email", "", "the account's contact email")
	flag.BoolVar(&o.acceptTOS, "accept-tos", false, "agree to the terms of service")
	flag.BoolVar(&o.eab, "eab", false, "register with External Account Binding (--kid, --hmac)")
	flag.StringVar(&o.kid, "eab.kid", "", "the EAB key id")
	flag.StringVar(&o.hmac, "eab.hmac", "", "the EAB HMAC key (base64url)")
	flag.StringVar(&o.domain, "domains", "", "the name to certify")
	flag.BoolVar(&o.http, "http", false, "answer http-01 with lego's own server")
	flag.StringVar(&o.httpAddress, "http.address", ":80", "where lego's http-01 server listens (interface:port)")
	flag.BoolVar(&o.tls, "tls", false, "answer tls-alpn-01 with lego's own server")
	flag.StringVar(&o.tlsAddress, "tls.address", ":443", "where lego's tls-alpn-01 server listens (interface:port)")
	flag.StringVar(&o.path, "path", ".lego", "where accounts and certificates are kept")
	flag.Parse()
	if flag.NArg() != 1 || o.server == "" || o.domain == "" || !(o.http || o.tls) {
		fmt.Fprintln(os.Stderr, "usage: lego-driver --server URL --domains NAME [--eab --eab.kid K --eab.hmac H] [--http --http.address HOST:PORT] [--tls --tls.address HOST:PORT] --path DIR run|renew|revoke")
		os.Exit(2)
	}
	if err := act(context.Background(), o, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "lego-driver:", err)
		os.Exit(1)
	}
}

func act(ctx context.Context, o options, action string) error {
	client, err := newClient(ctx, o, action == "run")
	if err != nil {
		return err
	}
	certs := filepath.Join(o.path, "certificates")
	base := filepath.Join(certs, strings.ReplaceAll(o.domain, "*", "_"))
	switch action {
	case "run":
		res, err := client.Certificate.Obtain(ctx, certificate.ObtainRequest{Domains: []string{o.domain}, KeyType: certcrypto.EC256, Bundle: true})
		if err != nil {
			return fmt.Errorf("obtain: %w", err)
		}
		return save(certs, base, res)
	case "renew":
		res, err := load(base, o.domain)
		if err != nil {
			return err
		}
		renewed, err := client.Certificate.Renew(ctx, *res, &certificate.RenewOptions{KeyType: certcrypto.EC256, Bundle: true})
		if err != nil {
			return fmt.Errorf("renew: %w", err)
		}
		return save(certs, base, renewed)
	case "revoke":
		pem, err := os.ReadFile(base + ".crt")
		if err != nil {
			return err
		}
		if err := client.Certificate.Revoke(ctx, pem); err != nil {
			return fmt.Errorf("revoke: %w", err)
		}
		fmt.Println("certificate revoked:", o.domain)
		return nil
	default:
		return fmt.Errorf("unknown action %q (run, renew, revoke)", action)
	}
}

// newClient loads (or, for run, creates) the account key under --path; run registers it with EAB, the other actions
// find the account by its key.
func newClient(ctx context.Context, o options, register bool) (*lego.Client, error) {
	keyFile := filepath.Join(o.path, "accounts", "account.key")
	key, err := accountKey(keyFile, register)
	if err != nil {
		return nil, err
	}
	u := &user{email: o.email, key: key}
	config := lego.NewConfig(u)
	config.CADirURL = o.server
	config.UserAgent = "certrail-lego-e2e"
	config.Certificate.Timeout = 120 * time.Second
	client, err := lego.NewClient(config)
	if err != nil {
		return nil, err
	}
	if register {
		if !o.eab {
			return nil, errors.New("run registers with External Account Binding: give --eab --kid --hmac")
		}
		u.reg, err = client.Registration.RegisterWithExternalAccountBinding(ctx, registration.RegisterEABOptions{
			TermsOfServiceAgreed: o.acceptTOS, Kid: o.kid, HmacEncoded: o.hmac})
	} else {
		u.reg, err = client.Registration.ResolveAccountByKey(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("account: %w", err)
	}
	// a client whose requests are signed with the account's URL (kid), answering with lego's own challenge servers
	client, err = lego.NewClient(config)
	if err != nil {
		return nil, err
	}
	if o.http {
		host, port, err := net.SplitHostPort(o.httpAddress)
		if err != nil {
			return nil, fmt.Errorf("--http.address: %w", err)
		}
		if err := client.Challenge.SetHTTP01Provider(http01.NewProviderServer(host, port)); err != nil {
			return nil, err
		}
	}
	if o.tls {
		host, port, err := net.SplitHostPort(o.tlsAddress)
		if err != nil {
			return nil, fmt.Errorf("--tls.address: %w", err)
		}
		if err := client.Challenge.SetTLSALPN01Provider(tlsalpn01.NewProviderServer(host, port)); err != nil {
			return nil, err
		}
	}
	return client, nil
}

func accountKey(file string, create bool) (crypto.Signer, error) {
	if data, err := os.ReadFile(file); err == nil {
		return certcrypto.ParsePEMPrivateKey(data)
	} else if !create || !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key, err := certcrypto.GeneratePrivateKey(certcrypto.EC256)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, err
	}
	return key, os.WriteFile(file, certcrypto.PEMEncode(key), 0o600)
}

func save(dir, base string, res *certificate.Resource) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for suffix, data := range map[string][]byte{".crt": res.Certificate, ".issuer.crt": res.IssuerCertificate} {
		if err := os.WriteFile(base+suffix, data, 0o644); err != nil {
			return err
		}
	}
	fmt.Println("certificate saved:", base+".crt")
	return os.WriteFile(base+".key", res.PrivateKey, 0o600)
}

func load(base, domain string) (*certificate.Resource, error) {
	cert, err := os.ReadFile(base + ".crt")
	if err != nil {
		return nil, err
	}
	return &certificate.Resource{Domains: []string{domain}, Certificate: cert}, nil
}
