#!/bin/bash
# every second: time, total busy jiffies, mariadbd utime+stime, redis-server utime+stime
M=$(pgrep -x mariadbd | head -1); R=$(pgrep -x redis-server | head -1)
while true; do
  echo "$(date +%s) $(head -1 /proc/stat | awk '{print $2+$3+$4+$7+$8, $5+$6}') $(awk '{print $14+$15}' /proc/$M/stat) $(awk '{print $14+$15}' /proc/$R/stat)"
  sleep 1
done
