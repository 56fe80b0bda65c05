-- Argo CD health check for Savepoint's kinds (savepoint.dev/v1alpha1):
-- VolumeRevert, ShareBackup, ShareRestore, ImageSnapshot, SavepointSchedule.
-- The same script serves all (it looks at obj.kind); argocd-cm.yaml registers
-- it under resource.customizations.health.savepoint.dev_<Kind>.
--
--   Healthy      the action succeeded (Succeeded), or the backup is there
--                (Available, also while a restore reads it: Restoring)
--   Progressing  accepted, waiting for something that clears by itself
--                (VolumeBusy, PvcNotBound, SnapshotNotReady, MoverLimit, ...),
--                working (Reverting, Creating, Restoring), undoing its steps
--                after a failure (Aborting; it ends Failed), or deleting
--   Suspended    waiting for you: the volume is in use (reason VolumeInUse);
--                stop the workload and the action goes on by itself
--   Degraded     Failed (the message says why), ErrorDeleting, or waiting on
--                a savepoint.dev/state error annotation that must be reset
--                (reason VolumeInErrorState)
--
-- A SavepointSchedule is Healthy while Active, Suspended while suspended,
-- Degraded when its spec cannot run (Invalid) or its latest run failed
-- (condition LastRunFailed True, whose message names the child).
--
-- Phases come from operator/api/*.py; tests/unit/test_argocd_health.py runs
-- this script with Lua 5.1 (as Argo CD's gopher-lua) for every phase of
-- every kind. Only Lua's base and string functions are used.

local PHASES = {
  VolumeRevert = {
    Pending = "Progressing", Reverting = "Progressing",
    Succeeded = "Healthy", Failed = "Degraded", Aborting = "Progressing",
  },
  ShareBackup = {
    Pending = "Progressing", Creating = "Progressing",
    Available = "Healthy", Restoring = "Healthy",
    Deleting = "Progressing", ErrorDeleting = "Degraded", Failed = "Degraded",
    Aborting = "Progressing",
  },
  ShareRestore = {
    Pending = "Progressing", Restoring = "Progressing",
    Succeeded = "Healthy", Failed = "Degraded", Aborting = "Progressing",
  },
  ImageSnapshot = {
    Pending = "Progressing", Creating = "Progressing",
    Succeeded = "Healthy", Failed = "Degraded",
    Deleting = "Progressing", ErrorDeleting = "Degraded", Aborting = "Progressing",
  },
  SavepointSchedule = {
    Active = "Healthy", Suspended = "Suspended", Invalid = "Degraded",
  },
}

-- Waiting reasons (phase Pending) that need a person rather than time.
local WAITING_ON_YOU = {
  VolumeInUse = "Suspended",
  VolumeInErrorState = "Degraded",
}

local function condition(status, type_)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(status, ready)
  local message = status.message
  if (message == nil or message == "") and ready ~= nil then
    message = ready.message
  end
  if message == nil then
    message = ""
  end
  if ready ~= nil and ready.reason ~= nil and ready.reason ~= "" then
    message = ready.reason .. ": " .. message
  end
  if status.progress ~= nil and status.progress.percent ~= nil then
    message = message .. " (" .. tostring(status.progress.percent) .. "%)"
  end
  return message
end

local hs = {}
local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Savepoint operator to pick this up"
  return hs
end

local ready = condition(status, "Ready")
local succeeded = condition(status, "Succeeded")
local phases = PHASES[obj.kind] or {}
local health = phases[status.phase]

if health == nil then
  -- A phase this script does not know (a newer operator): go by the conditions.
  if ready ~= nil and ready.status == "True" then
    health = "Healthy"
  elseif succeeded ~= nil and succeeded.status == "False" then
    health = "Degraded"
  else
    health = "Progressing"
  end
elseif status.phase == "Pending" and ready ~= nil and WAITING_ON_YOU[ready.reason] ~= nil then
  health = WAITING_ON_YOU[ready.reason]
end

hs.status = health
hs.message = describe(status, ready)
local lastRun = condition(status, "LastRunFailed")
if obj.kind == "SavepointSchedule" and health == "Healthy" and lastRun ~= nil and lastRun.status == "True" then
  hs.status = "Degraded"
  hs.message = "LastRunFailed: " .. (lastRun.reason or "") .. ": " .. (lastRun.message or "")
end
return hs
