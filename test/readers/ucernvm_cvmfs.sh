#!/bin/sh
# What µCernVM's bootloader makes of the context (run by dash, as busybox sh would run it):
# source the parsed block ($1, written by ucernvm_parse.py) as scripts.d/06context does, then
# apply it as cernvm-micro scripts.d/14cvmfs does ("Apply context information", "Build path
# and URL"), starting from 14cvmfs's own defaults. Prints one NAME=value line per result.
set -e
CVMFS_SERVER="hepvm.cern.ch"
CVMFS_REPOS="cernvm-devel.cern.ch"
CVMFS_PROXY="\"auto;DIRECT\""
CVMFS_URL=""
CVMFS_REPOSITORY_TAG=""

. "$1"

[ "x$_UCONTEXT_CVMFS_HTTP_PROXY" != "x" ] && CVMFS_PROXY="$_UCONTEXT_CVMFS_HTTP_PROXY"
[ "x$_UCONTEXT_CVMFS_BRANCH" != "x" ] && CVMFS_REPOS="$_UCONTEXT_CVMFS_BRANCH"
[ "x$_UCONTEXT_CVMFS_TAG" != "x" ] && CVMFS_REPOSITORY_TAG="$_UCONTEXT_CVMFS_TAG"
[ "x$_UCONTEXT_CVMFS_SERVER" != "x" ] && CVMFS_SERVER="$_UCONTEXT_CVMFS_SERVER"

if [ -z "$CVMFS_URL" ]; then
  for this_server in $(echo "$CVMFS_SERVER" | tr , " "); do
    this_url=http://${this_server}/cvmfs/${CVMFS_REPOS}
    if [ -z "$CVMFS_URL" ]; then
      CVMFS_URL="\"${this_url}"
    else
      CVMFS_URL="${CVMFS_URL};${this_url}"
    fi
  done
  CVMFS_URL="${CVMFS_URL}\""
fi

printf 'CVMFS_PROXY=%s\n' "$CVMFS_PROXY"
printf 'CVMFS_REPOS=%s\n' "$CVMFS_REPOS"
printf 'CVMFS_REPOSITORY_TAG=%s\n' "$CVMFS_REPOSITORY_TAG"
printf 'CVMFS_SERVER=%s\n' "$CVMFS_SERVER"
printf 'CVMFS_SERVER_URL=%s\n' "$CVMFS_URL"
