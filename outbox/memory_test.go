package outbox_test

import (
	"testing"

	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/outbox/internal/storetest"
)

func TestMemory(t *testing.T) {
	storetest.Run(t, func(*testing.T) outbox.Store { return outbox.NewMemory() })
}

func TestKindString(t *testing.T) {
	for k, want := range map[outbox.Kind]string{outbox.Groupchat: "groupchat", outbox.Chat: "chat", 0: "Kind(0)", 9: "Kind(9)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}
