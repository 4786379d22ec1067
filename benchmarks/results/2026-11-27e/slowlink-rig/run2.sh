#!/bin/bash
# run2.sh NAME port I T store mode dir size life [blackhole_at kind]   (env SNS CNS HOST)
N=$1; P=$2; I=$3; T=$4; ST=$5; MODE=$6; DIR=$7; SZ=$8; LIFE=$9; BH=${10}; KIND=${11}
SNS=${SNS:-hsA}; CNS=${CNS:-hsB}; HOST=${HOST:-10.77.0.1}
PY=/work/main/.venv/bin/python
cd /tmp/hunt-slow
HOST=$HOST HB_TRACE=$HB_TRACE SRV_LIFE=$((${LIFE%.*}+20)) ip netns exec $SNS $PY srv.py $P $I $T $ST > out/$N.srv 2>&1 & SP=$!
sleep 1.2
HOST=$HOST HB_TRACE=$HB_TRACE ip netns exec $CNS $PY cli.py $P $I $T $MODE $DIR $SZ $LIFE > out/$N.cli 2>&1 & CP=$!
if [ -n "$BH" ]; then
  sleep $BH
  ip netns exec $CNS nft add table inet t
  ip netns exec $CNS nft add chain inet t o '{ type filter hook output priority 0; }'
  ip netns exec $CNS nft add chain inet t i '{ type filter hook input priority 0; }'
  case $KIND in
   both) ip netns exec $CNS nft add rule inet t o tcp dport $P drop; ip netns exec $CNS nft add rule inet t i tcp sport $P drop;;
   c2s) ip netns exec $CNS nft add rule inet t o tcp dport $P drop;;
   s2c) ip netns exec $CNS nft add rule inet t i tcp sport $P drop;;
  esac
  echo "{\"ev\":\"BLACKHOLE\",\"kind\":\"$KIND\",\"t\":$(date +%s.%N)}" > out/$N.bh
fi
wait $CP
kill $SP 2>/dev/null; wait $SP 2>/dev/null
ip netns exec $CNS nft delete table inet t 2>/dev/null
true
