"""Changes to a plan as team events make them; each refuses what the plan's state does not allow.

Every team event becomes one command: a frozen dataclass naming its `plan_id`, whose
`apply(plan, at)` checks the plan's state, changes it and bumps its version, or raises
`NotFound` (an unknown plan, goal, step or member: 404), `Conflict` (a duplicate, or a state
already recorded: 409) or `RuleViolation` (a change the plan's state does not allow: 422).
`apply_command` runs one on a copy of the plan and also refuses a change that would make the
plan break a rule of `check_plan` it did not break before. docs/events.md is the catalogue.
The commands live by area in base, team, plan, goals and steps; this package re-exports them.
"""

from service.domain.changes.base import (
    CLOSED_PLAN,
    CLOSED_STEP,
    DECLINED_REASON,
    DISAGREED_REASON,
    PAUSED_BY_DECLINE,
    PLAN_FIELDS,
    STEP_FIELDS,
    Command,
    apply_command,
)
from service.domain.changes.goals import (
    ChangeGoalStatus,
    ProposeGoal,
    RecordAgreement,
    RecordCheckIn,
    RecordOutcome,
    ReviseGoal,
    propose_goal,
)
from service.domain.changes.plan import (
    AddNote,
    CreatePlan,
    DeclineGoalSetting,
    ResumeGoalSetting,
    ReviewPlan,
    UpdatePlan,
    add_duration,
)
from service.domain.changes.steps import (
    AddStep,
    CompleteStep,
    UpdateStep,
)
from service.domain.changes.team import (
    JoinMember,
    LeaveMember,
    ProposerSpec,
    find_or_join,
    join,
)

__all__ = [
    "CLOSED_PLAN",
    "CLOSED_STEP",
    "DECLINED_REASON",
    "DISAGREED_REASON",
    "PAUSED_BY_DECLINE",
    "PLAN_FIELDS",
    "STEP_FIELDS",
    "AddNote",
    "AddStep",
    "ChangeGoalStatus",
    "Command",
    "CompleteStep",
    "CreatePlan",
    "DeclineGoalSetting",
    "JoinMember",
    "LeaveMember",
    "ProposeGoal",
    "ProposerSpec",
    "RecordAgreement",
    "RecordCheckIn",
    "RecordOutcome",
    "ResumeGoalSetting",
    "ReviewPlan",
    "ReviseGoal",
    "UpdatePlan",
    "UpdateStep",
    "add_duration",
    "apply_command",
    "find_or_join",
    "join",
    "propose_goal",
]
