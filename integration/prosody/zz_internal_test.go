package prosody

import (
	"context"
	"testing"
	"time"
)

func TestZZLevels(t *testing.T) {
	for _, lvl := range []string{"debug", "warn", "error"} {
		t0 := time.Now()
		s := StartTB(t, Options{LogLevel: lvl})
		t.Log(lvl, time.Since(t0))
		s.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := Start(ctx, Options{ExtraGlobal: `c2s_interfaces = { "127.0.0.2" }`})
	t.Log(err)
}
