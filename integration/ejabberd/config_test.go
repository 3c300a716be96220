package ejabberd

import (
	"strings"
	"testing"
)

// TestConfigRoomArchive: rooms archive by default, and not with
// NoRoomArchive.
func TestConfigRoomArchive(t *testing.T) {
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{}, "    default_room_options:\n      mam: true\n"},
		{Options{NoRoomArchive: true}, "    default_room_options:\n      mam: false\n"},
	} {
		if cfg := c.opts.config(layout{dir: t.TempDir(), port: 5222, apiPort: 5280}); !strings.Contains(cfg, c.want) {
			t.Errorf("NoRoomArchive %v: config lacks %q:\n%s", c.opts.NoRoomArchive, c.want, cfg)
		}
	}
}
